package catalog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
)

// TestSealedStore writes through a sealing store and reads back through
// stores with and without the private key: enveloped objects keep a clear
// header of their type and clear fields, raw ones are age streams, the
// identity stays readable, and objects written in the clear read as they
// are (a mixed repository).
func TestSealedStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := filepath.Join(dir, "key.txt")
	pub, err := NewIdentityFile(key, "now")
	if err != nil {
		t.Fatal(err)
	}
	writer, err := NewKeyring(pub, "")
	if err != nil {
		t.Fatal(err)
	}
	reader, err := NewKeyring("", key)
	if err != nil {
		t.Fatal(err)
	}
	raw := mem.New(time.Now)
	w := NewSealedStore(raw, writer, true)
	r := NewSealedStore(raw, reader, false)
	none := NewSealedStore(raw, nil, false)
	if !Sealing(w) || Sealing(r) {
		t.Fatal("Sealing: wrong")
	}

	// An envelope with a MAC and clear fields; a raw part; the identity;
	// an object from before encryption.
	data := []byte(strings.Repeat("a WAL segment's bytes ", 500))
	h := Header{Type: "wal", Name: "000000010000000000000001", Codec: codec.Zstd}
	h, obj, err := EncodeBytes(h, 0, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := cloud.Create(ctx, w, "main/wal/seg", bytes.NewReader(obj), int64(len(obj))); err != nil {
		t.Fatal(err)
	}
	w.Put(ctx, "main/base/1/part-00001.tar.zst.age", bytes.NewReader(data), int64(len(data)))
	w.Put(ctx, "main/identity", bytes.NewReader(obj), int64(len(obj)))
	raw.Put(ctx, "main/wal/old", bytes.NewReader(obj), int64(len(obj)))

	get := func(s cloud.Storage, key string) ([]byte, error) {
		rc, err := s.Get(ctx, key)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}
	for _, k := range []string{"main/wal/seg", "main/base/1/part-00001.tar.zst.age"} {
		stored, _ := get(raw, k)
		if bytes.Contains(stored, data[:64]) || bytes.Contains(stored, []byte(h.SHA256)) {
			t.Errorf("%s holds its plaintext or its checksum in the clear", k)
		}
		if _, err := get(none, k); !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), k) {
			t.Errorf("%s without a private key: %v, want ErrNoIdentity naming it", k, err)
		}
	}
	if got, err := get(r, "main/wal/seg"); err != nil || !bytes.Equal(got, obj) {
		t.Fatalf("the sealed envelope opened to %d bytes, equal %v, %v", len(got), bytes.Equal(got, obj), err)
	}
	if got, err := get(r, "main/base/1/part-00001.tar.zst.age"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the sealed part opened to %d bytes, %v", len(got), err)
	}
	for _, k := range []string{"main/identity", "main/wal/old"} {
		if got, err := get(none, k); err != nil || !bytes.Equal(got, obj) {
			t.Fatalf("%s (in the clear) read %d bytes, %v", k, len(got), err)
		}
	}
	mac, macKey, ok := MACOf(w, h.SHA256)
	if !ok || mac == "" || macKey == "" {
		t.Fatal("MACOf: no MAC from a sealing store")
	}
	if _, _, ok := MACOf(r, h.SHA256); ok {
		t.Fatal("MACOf: a MAC from a store that does not seal")
	}
	outer, err := ClearHeader(ctx, none, "main/wal/seg")
	if err != nil || outer.Encryption != EncryptionAge || outer.Type != "wal" || outer.MAC != mac || outer.MACKey != macKey || outer.Size != 0 || outer.SHA256 != "" {
		t.Fatalf("the clear header: %+v, %v", outer, err)
	}
	// A store that reads without the wrapper is told what the object is.
	rc, _ := raw.Get(ctx, "main/wal/seg")
	_, err = ReadHeader(rc)
	rc.Close()
	if !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "encryption_identity_file") {
		t.Fatalf("ReadHeader of a sealed object: %v", err)
	}
	// Another host with the same recipients computes the same MAC.
	other, _ := NewKeyring(pub, "")
	if m2, k2, _ := MACOf(NewSealedStore(raw, other, true), h.SHA256); m2 != mac || k2 != macKey {
		t.Fatal("the same recipients gave another MAC")
	}
	pub2, _ := NewIdentityFile(filepath.Join(dir, "key2.txt"), "now")
	rotated, _ := NewKeyring(pub2, "")
	if _, k3, _ := MACOf(NewSealedStore(raw, rotated, true), h.SHA256); k3 == macKey {
		t.Fatal("other recipients gave the same MAC key")
	}
}
