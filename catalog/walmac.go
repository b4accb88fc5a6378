package catalog

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/cellar-backup/cellar/cloud"
)

// A sealed WAL object's outer header carries a MAC of the original bytes
// (the HMAC-SHA256 of their SHA-256), so that a host holding only public keys recognises a
// repeated push of an archived file although each sealing differs. The
// key is derived (HKDF-SHA256) from the recipients' public keys, sorted:
// every host configured with the same encryption_recipients computes the
// same MACs, and nothing in the repository gives the key away (age's
// X25519 stanzas do not name their recipient). It is not a secret from
// whoever knows the public keys: to them a MAC confirms a guessed WAL
// file, and no more. MACKey names the key (a hash of it), so that a push
// after the recipients changed says it cannot compare rather than
// claiming a conflict.

// walMACKey derives the MAC key and its name from the recipients' texts.
func walMACKey(texts []string) ([]byte, string) {
	sorted := slices.Clone(texts)
	slices.Sort(sorted)
	key, err := hkdf.Key(sha256.New, []byte(strings.Join(sorted, "\n")), nil, "cellar wal mac v1", 32)
	if err != nil {
		panic(err) // only for lengths HKDF-SHA256 cannot give
	}
	id := sha256.Sum256(append([]byte("cellar wal mac id v1\n"), key...))
	return key, hex.EncodeToString(id[:6])
}

// MACOf is the MAC of a WAL object whose original bytes have the SHA-256
// sum (hex, as Header.SHA256): HMAC-SHA256 of that text under the key,
// and the key's name; ok is false when store does not seal. A keyed hash
// of the checksum is as good a MAC of the bytes as SHA-256 is a hash of
// them, and costs nothing more than the checksum every push computes.
func MACOf(store cloud.Storage, sum string) (mac, keyID string, ok bool) {
	if !Sealing(store) {
		return "", "", false
	}
	k := KeyringOf(store)
	return k.macOf(sum), k.macID, true
}

func (k *Keyring) macOf(sum string) string {
	m := hmac.New(sha256.New, k.mac)
	m.Write([]byte(sum))
	return hex.EncodeToString(m.Sum(nil))
}
