package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
)

// TestKeygen writes a key pair as a user runs it: the private key 0600,
// the public key printed, the two a pair; never over an existing file.
func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "restore.key")
	r := cellar(t, nil, "keygen", "--output", key)
	if r.code != 0 {
		t.Fatalf("keygen: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	pub, ok := strings.CutPrefix(strings.TrimSpace(r.stdout), "Public key: ")
	if !ok || !strings.HasPrefix(pub, "age1") {
		t.Fatalf("keygen printed %q, want Public key: age1...", r.stdout)
	}
	fi, err := os.Stat(key)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the private key file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	written, _ := os.ReadFile(key)
	if strings.Contains(r.stdout+r.stderr, "AGE-SECRET-KEY") {
		t.Fatal("keygen printed the private key")
	}

	// What is sealed to the printed key opens with the file.
	rs, err := catalog.ParseRecipients(pub)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := catalog.ReadIdentities(key)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, _ := (&catalog.Keyring{Recipients: rs}).Seal(&buf)
	io.WriteString(w, "a WAL segment")
	w.Close()
	pr, err := (&catalog.Keyring{Identities: ids}).Open(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(pr); err != nil || string(got) != "a WAL segment" {
		t.Fatalf("opened %q, %v", got, err)
	}

	// The file as an argument, as age-keygen -o.
	if r := cellar(t, nil, "keygen", filepath.Join(dir, "second.key")); r.code != 0 || !strings.HasPrefix(r.stdout, "Public key: age1") {
		t.Fatalf("keygen FILE: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	for _, args := range [][]string{{"keygen", "--output", key}, {"keygen"}, {"keygen", key}, {"keygen", "a", "b"}} {
		r := cellar(t, nil, args...)
		if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "--output") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and one line about --output", args, r.code, r.stderr)
		}
	}
	if again, _ := os.ReadFile(key); !bytes.Equal(again, written) {
		t.Fatal("keygen changed an existing key file")
	}
}
