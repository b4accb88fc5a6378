package catalog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
)

// PutJSON stores v as a small JSON object of the given type in an
// envelope. With create, the object is written only if key is absent
// (cloud.ErrExist otherwise).
func PutJSON(ctx context.Context, store cloud.Storage, key, typ string, v any, create bool) error {
	js, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	sum := sha256.Sum256(js)
	var buf bytes.Buffer
	h := Header{Type: typ, Codec: codec.None, Size: int64(len(js)), SHA256: hex.EncodeToString(sum[:])}
	if Sealing(store) {
		h.Clear = clearMarker(typ, js)
	}
	if err := Encode(&buf, h, 0, bytes.NewReader(js)); err != nil {
		return err
	}
	if create {
		return cloud.Create(ctx, store, key, &buf, int64(buf.Len()))
	}
	return store.Put(ctx, key, &buf, int64(buf.Len()))
}

// GetJSON reads an object written by PutJSON into v, checking its type and
// checksum.
func GetJSON(ctx context.Context, store cloud.Storage, key, typ string, v any) error {
	js, err := readSmall(ctx, store, key, typ, 64<<20)
	if errors.Is(err, ErrNoIdentity) {
		js, err = readClear(ctx, store, key, typ, err)
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(js, v); err != nil {
		return fmt.Errorf("%s: %w: %v", key, ErrCorrupt, err)
	}
	return nil
}

// readSmall reads a whole object of the given type and at most limit
// bytes, checking its checksum.
func readSmall(ctx context.Context, store cloud.Storage, key, typ string, limit int64) ([]byte, error) {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	h, err := ReadHeader(rc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if h.Type != typ {
		return nil, fmt.Errorf("%s: %w: a %q object where a %q was expected", key, ErrCorrupt, h.Type, typ)
	}
	if h.Size > limit {
		return nil, fmt.Errorf("%s: %w: %d bytes is too large for a %s", key, ErrCorrupt, h.Size, typ)
	}
	body, err := Decode(rc, h)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	defer body.Close()
	// Read it whole: the checksum is known good only at the end.
	js, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return js, nil
}

// Identity records which PostgreSQL cluster a server's repository belongs
// to. The first WAL push writes it; every later push compares.
type Identity struct {
	SystemIdentifier uint64    `json:"system_identifier,string"`
	WALSegmentSize   int64     `json:"wal_segment_size"`
	CreatedAt        time.Time `json:"created_at"`
	CreatedBy        string    `json:"created_by"`
}

// ReadIdentity returns the server's identity; cloud.ErrNotExist when none
// has been recorded yet.
func ReadIdentity(ctx context.Context, store cloud.Storage, server string) (Identity, error) {
	var id Identity
	err := GetJSON(ctx, store, IdentityKey(server), "identity", &id)
	return id, err
}

// EnsureIdentity records id as the server's identity unless one is
// recorded already, and returns the recorded one.
func EnsureIdentity(ctx context.Context, store cloud.Storage, server string, id Identity) (Identity, error) {
	got, err := ReadIdentity(ctx, store, server)
	if err == nil || !errors.Is(err, cloud.ErrNotExist) {
		return got, err
	}
	err = PutJSON(ctx, store, IdentityKey(server), "identity", id, true)
	if errors.Is(err, cloud.ErrExist) {
		return ReadIdentity(ctx, store, server)
	}
	return id, err
}

// clearMarker is what stays readable of a sealed marker, so that cron and
// retention work on a host without the private key: a backup's marker
// (id, status, host, pid, times: nothing of the database's, and not its
// error, which may name files), a keep, and a drill's record (for check,
// cron and list-drills: not its error or the query's answer).
func clearMarker(typ string, js []byte) json.RawMessage {
	if typ != "backup-started" && typ != "backup-keep" && typ != "drill" {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil
	}
	delete(m, "error")
	delete(m, "answer")
	out, err := json.Marshal(m)
	if err != nil {
		return nil
	}
	return out
}

// readClear reads what a sealed object of type typ keeps readable (its
// outer header's Clear), after opening it failed with err: err again when
// it keeps nothing.
func readClear(ctx context.Context, store cloud.Storage, key, typ string, err error) ([]byte, error) {
	h, herr := ClearHeader(ctx, store, key)
	if herr != nil || h.Type != typ || len(h.Clear) == 0 {
		return nil, err
	}
	return h.Clear, nil
}
