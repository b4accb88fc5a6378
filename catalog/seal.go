package catalog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
)

// Client-side encryption seals objects with age (age-encryption.org/v1)
// to public keys, the recipients, so that a host that holds only those can
// write a repository it cannot read back; only a holder of a matching
// private key, an identity, opens it.

// Keyring is what a process seals objects to and opens them with.
type Keyring struct {
	// Recipients are the public keys new objects are sealed to.
	Recipients []age.Recipient
	// Identities are the private keys objects are opened with; none on a
	// host that only writes.
	Identities []age.Identity

	mac   []byte // the key of WAL objects' MACs, from the recipients
	macID string
}

// NewKeyring reads the settings: encryption_recipients (may be empty on a
// host that only reads) and encryption_identity_file (may be empty on a
// host that only writes).
func NewKeyring(recipients, identityFiles string) (*Keyring, error) {
	k := &Keyring{}
	if strings.TrimSpace(recipients) != "" {
		rs, texts, err := parseRecipients(recipients)
		if err != nil {
			return nil, err
		}
		k.Recipients = rs
		k.mac, k.macID = walMACKey(texts)
	}
	if strings.TrimSpace(identityFiles) != "" {
		ids, err := ReadIdentities(identityFiles)
		if err != nil {
			return nil, err
		}
		k.Identities = ids
	}
	return k, nil
}

// ErrNoIdentity marks an object that the keyring cannot open: no
// identity configured, or none that matches the object's recipients.
var ErrNoIdentity = errors.New("no identity that opens it")

// Seal returns a writer that seals what is written to it onto w. Close
// finishes the sealed stream (it does not close w); what was written is
// not authenticated until then.
func (k *Keyring) Seal(w io.Writer) (io.WriteCloser, error) {
	if k == nil || len(k.Recipients) == 0 {
		return nil, errors.New("no recipients to encrypt to: set encryption_recipients")
	}
	return age.Encrypt(w, k.Recipients...)
}

// Open returns a reader of what r holds sealed. A wrong identity fails
// here with ErrNoIdentity; damage to the sealed stream fails a Read with
// an error wrapping ErrCorrupt (age authenticates every 64 KiB chunk, and
// the last one as the last).
func (k *Keyring) Open(r io.Reader) (io.Reader, error) {
	if k == nil || len(k.Identities) == 0 {
		return nil, fmt.Errorf("%w: no encryption_identity_file is configured", ErrNoIdentity)
	}
	pr, err := age.Decrypt(r, k.Identities...)
	var noMatch *age.NoIdentityMatchError
	switch {
	case errors.As(err, &noMatch):
		return nil, fmt.Errorf("%w: none of the identities of encryption_identity_file matches its recipients", ErrNoIdentity)
	case err != nil:
		return nil, fmt.Errorf("%w: its encryption header: %v", ErrCorrupt, err)
	}
	return &openReader{r: pr}, nil
}

// openReader marks age's payload errors as corruption.
type openReader struct{ r io.Reader }

func (o *openReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: its encrypted payload: %v", ErrCorrupt, err)
	}
	return n, err
}

// ParseRecipients reads the value of encryption_recipients: public keys
// (age1..., ssh-ed25519 ..., ssh-rsa ...) separated by commas, or the path
// of a file of them, one a line, blank lines and lines starting with #
// ignored, as `age -R` reads it. Errors name the key or the line.
func ParseRecipients(value string) ([]age.Recipient, error) {
	rs, _, err := parseRecipients(value)
	return rs, err
}

// parseRecipients also returns each key's text.
func parseRecipients(value string) ([]age.Recipient, []string, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, nil, errors.New("encryption_recipients is empty: give one or more public keys (age1...), or a file of them")
	}
	var texts []string
	if !looksLikeKey(value) {
		f, err := os.Open(value)
		if err != nil {
			return nil, nil, fmt.Errorf("encryption_recipients: %v (give public keys, age1..., or a file of them)", err)
		}
		defer f.Close()
		var out []age.Recipient
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			r, err := parseRecipient(line)
			if err != nil {
				return nil, nil, fmt.Errorf("encryption_recipients: %s, line %d: %v", value, n, err)
			}
			out = append(out, r)
			texts = append(texts, line)
		}
		if err := sc.Err(); err != nil {
			return nil, nil, fmt.Errorf("encryption_recipients: %s: %v", value, err)
		}
		if len(out) == 0 {
			return nil, nil, fmt.Errorf("encryption_recipients: %s holds no public key", value)
		}
		return out, texts, nil
	}
	var out []age.Recipient
	for _, s := range splitKeys(value) {
		r, err := parseRecipient(s)
		if err != nil {
			return nil, nil, fmt.Errorf("encryption_recipients: %v", err)
		}
		out = append(out, r)
		texts = append(texts, s)
	}
	return out, texts, nil
}

// splitKeys splits an inline list of public keys: commas separate keys,
// and so do blanks between age1 keys (an ssh key has blanks of its own:
// type, key, comment).
func splitKeys(value string) []string {
	var out []string
	for _, item := range strings.Split(value, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
		case strings.HasPrefix(item, "ssh-"):
			out = append(out, item)
		default:
			out = append(out, strings.Fields(item)...)
		}
	}
	return out
}

// looksLikeKey tells a list of keys from a file name.
func looksLikeKey(s string) bool {
	return strings.HasPrefix(s, "age1") || strings.HasPrefix(s, "ssh-")
}

func parseRecipient(s string) (age.Recipient, error) {
	switch {
	case strings.HasPrefix(s, "age1"):
		r, err := age.ParseX25519Recipient(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an age public key: %v", short(s), err)
		}
		return r, nil
	case strings.HasPrefix(s, "ssh-"):
		r, err := agessh.ParseRecipient(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an ssh-ed25519 or ssh-rsa public key: %v", short(s), err)
		}
		return r, nil
	case strings.HasPrefix(s, "AGE-SECRET-KEY-"):
		return nil, errors.New("a private key (AGE-SECRET-KEY-...) where a public key belongs: give its public key, which `cellar keygen` printed")
	}
	return nil, fmt.Errorf("%q is not a public key (age1..., ssh-ed25519 or ssh-rsa)", short(s))
}

// short cuts what is quoted in an error.
func short(s string) string {
	if len(s) > 24 {
		return s[:24] + "..."
	}
	return s
}

// ReadIdentities reads the identity files that encryption_identity_file
// names (one or more paths, separated by commas): age identity files (one
// AGE-SECRET-KEY-... a line, # comments) or unencrypted OpenSSH private
// keys (ed25519, rsa). A file readable by others than its owner is
// refused.
func ReadIdentities(value string) ([]age.Identity, error) {
	var out []age.Identity
	for _, path := range strings.Split(value, ",") {
		path = strings.TrimSpace(path)
		if path == "" {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("encryption_identity_file: %v", err)
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("encryption_identity_file: %s is readable by others (mode %04o): chmod 600 it", path, fi.Mode().Perm())
		}
		var ids []age.Identity
		if bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----BEGIN")) {
			id, err := agessh.ParseIdentity(b)
			if err != nil {
				return nil, fmt.Errorf("encryption_identity_file: %s: not an unencrypted OpenSSH private key: %v", path, err)
			}
			ids = []age.Identity{id}
		} else if ids, err = age.ParseIdentities(bytes.NewReader(b)); err != nil {
			// age's message names the line, never the key.
			return nil, fmt.Errorf("encryption_identity_file: %s: %v", path, err)
		}
		out = append(out, ids...)
	}
	if len(out) == 0 {
		return nil, errors.New("encryption_identity_file names no file")
	}
	return out, nil
}

// NewIdentityFile writes a new X25519 identity to path, created 0600 and
// never over an existing file, in the format of age-keygen, and returns
// its public key.
func NewIdentityFile(path string, now string) (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	pub := id.Recipient().String()
	_, err = fmt.Fprintf(f, "# created: %s\n# public key: %s\n%s\n", now, pub, id)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return pub, nil
}
