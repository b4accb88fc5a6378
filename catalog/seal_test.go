package catalog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/cellar-backup/cellar/cloud/storagetest"
)

// sealed seals data with k.
func sealed(t *testing.T, k *Keyring, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := k.Seal(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestSealOpen seals to a new key's public key and to an ssh-ed25519 key,
// opens with either private key, and refuses a wrong identity, none, and
// a ciphertext changed anywhere.
func TestSealOpen(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.txt")
	pub, err := NewIdentityFile(keyFile, "now")
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %04o, want 0600", fi.Mode().Perm())
	}
	if _, err := NewIdentityFile(keyFile, "now"); !errors.Is(err, os.ErrExist) {
		t.Fatalf("a second key over the first: %v, want ErrExist", err)
	}
	sshPub, sshKey := sshKeyPair(t, dir)
	recipients, err := ParseRecipients(pub + ", " + sshPub)
	if err != nil {
		t.Fatal(err)
	}
	data := storagetest.Bytes(11, 300<<10)
	ct := sealed(t, &Keyring{Recipients: recipients}, data)
	if bytes.Contains(ct, data[1000:1064]) {
		t.Fatal("the ciphertext holds 64 bytes of the plaintext")
	}
	for _, idFile := range []string{keyFile, sshKey} {
		ids, err := ReadIdentities(idFile)
		if err != nil {
			t.Fatal(err)
		}
		r, err := (&Keyring{Identities: ids}).Open(bytes.NewReader(ct))
		if err != nil {
			t.Fatalf("%s: %v", idFile, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: opened %d bytes, equal %v, %v", idFile, len(got), bytes.Equal(got, data), err)
		}
	}

	other := filepath.Join(dir, "other.txt")
	if _, err := NewIdentityFile(other, "now"); err != nil {
		t.Fatal(err)
	}
	ids, _ := ReadIdentities(other)
	if _, err := (&Keyring{Identities: ids}).Open(bytes.NewReader(ct)); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("a wrong identity: %v, want ErrNoIdentity", err)
	}
	if _, err := (&Keyring{}).Open(bytes.NewReader(ct)); !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "encryption_identity_file") {
		t.Fatalf("no identity: %v, want ErrNoIdentity naming the setting", err)
	}

	// A byte changed in the header, in the payload and in the last chunk;
	// the stream cut short.
	ids, _ = ReadIdentities(keyFile)
	k := &Keyring{Identities: ids}
	for _, at := range []int{40, len(ct) / 2, len(ct) - 5} {
		bad := append([]byte{}, ct...)
		bad[at] ^= 1
		r, err := k.Open(bytes.NewReader(bad))
		if err == nil {
			_, err = io.ReadAll(r)
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNoIdentity) {
			t.Fatalf("byte %d of %d changed: %v, want it detected", at, len(ct), err)
		}
	}
	r, _ := k.Open(bytes.NewReader(ct[:len(ct)-100]))
	if _, err := io.ReadAll(r); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("cut short: %v, want ErrCorrupt", err)
	}
}

// sshKeyPair writes an unencrypted OpenSSH ed25519 private key and
// returns its public key line and the file.
func sshKeyPair(t *testing.T, dir string) (string, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))), path
}

// TestParseRecipients reads keys inline and from a file as age -R does,
// and names what is wrong without printing a private key.
func TestParseRecipients(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.txt")
	pub, _ := NewIdentityFile(keyFile, "now")
	sshPub, _ := sshKeyPair(t, dir)
	list := filepath.Join(dir, "recipients.txt")
	os.WriteFile(list, []byte("# the restore hosts\n\n"+pub+"\n  "+sshPub+"\n"), 0o644)
	if rs, err := ParseRecipients(list); err != nil || len(rs) != 2 {
		t.Fatalf("a recipients file: %d recipients, %v", len(rs), err)
	}
	for _, inline := range []string{pub + "," + pub, pub + " " + pub, sshPub + ", " + pub} {
		if rs, err := ParseRecipients(inline); err != nil || len(rs) != 2 {
			t.Fatalf("two keys inline (%q): %d recipients, %v", inline, len(rs), err)
		}
	}
	secret, _ := os.ReadFile(keyFile)
	secretLine := strings.TrimSpace(string(secret[strings.Index(string(secret), "AGE-SECRET-KEY-"):]))
	badList := filepath.Join(dir, "bad.txt")
	os.WriteFile(badList, []byte(pub+"\n"+secretLine+"\n"), 0o644)
	for value, want := range map[string]string{
		"":                             "encryption_recipients is empty",
		"age1notakey":                  "not an age public key",
		pub + ", age1x":                "not an age public key",
		filepath.Join(dir, "none.txt"): "no such file",
		badList:                        "line 2: a private key",
		"ssh-ed25519 AAAAbad":          "not an ssh-ed25519",
	} {
		_, err := ParseRecipients(value)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", value, err, want)
		}
		if err != nil && strings.Contains(err.Error(), secretLine[15:]) {
			t.Errorf("%q: the error prints the private key: %v", value, err)
		}
	}
	// A damaged identity file: the error names the file and the line,
	// never the key.
	damaged := filepath.Join(dir, "damaged.txt")
	os.WriteFile(damaged, []byte("# x\n"+secretLine[:len(secretLine)-3]+"zzz\n"), 0o600)
	if _, err := ReadIdentities(damaged); err == nil || !strings.Contains(err.Error(), damaged) || strings.Contains(err.Error(), secretLine[15:40]) {
		t.Fatalf("a damaged identity file: %v, want an error naming the file and not the key", err)
	}
	os.Chmod(keyFile, 0o644)
	if _, err := ReadIdentities(keyFile); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("an identity file readable by others: %v, want it refused", err)
	}
}
