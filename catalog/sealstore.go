package catalog

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
)

// A sealed repository stores every object but the server's identity
// sealed with age to the recipients:
//
//   - an enveloped object (WAL, file lists, block maps, indexes,
//     manifests, markers) keeps an envelope in front, whose header holds
//     only its type, "encryption": "age" and what the catalog must read
//     without a private key (Header.MAC, Header.Clear); the payload is the
//     age stream of the whole original object, its own envelope first, so
//     that sizes and checksums are checked inside, after opening;
//   - a part is the age stream of the compressed tar stream, under a key
//     that ends in .age, so that `age -d -i key part-00001.tar.zst.age |
//     zstd -d | tar -x` unpacks it.
//
// SealedStore does this below everything else: what is Put is sealed (when
// the repository is configured to seal), and what is read is opened when
// it is sealed and returned as it was written, so that a mixed repository
// reads whole. The rest of Cellar sees the objects it wrote.

// Encryption names, as the envelope header's "encryption" field has them.
const (
	EncryptionNone = "none"
	EncryptionAge  = "age"
)

// SealedSuffix ends the key of a sealed object that has no envelope.
const SealedSuffix = ".age"

var ageMagic = []byte("age-encryption.org/v1\n")

// SealedStore seals and opens the objects of a repository.
type SealedStore struct {
	cloud.Storage // as stored
	keys          *Keyring
	seal          bool
}

// NewSealedStore wraps s. With seal, every object written is sealed to
// the keyring's recipients; objects read are opened with its identities
// whenever they are sealed. The wrapper has the optional extras of s
// (cloud.BatchDeleter, cloud.TempCleaner) when s has them.
func NewSealedStore(s cloud.Storage, keys *Keyring, seal bool) cloud.Storage {
	ss := &SealedStore{Storage: s, keys: keys, seal: seal}
	bd, batch := s.(cloud.BatchDeleter)
	tc, temp := s.(cloud.TempCleaner)
	switch {
	case batch && temp:
		return &struct {
			*SealedStore
			cloud.BatchDeleter
			cloud.TempCleaner
		}{ss, bd, tc}
	case batch:
		return &struct {
			*SealedStore
			cloud.BatchDeleter
		}{ss, bd}
	case temp:
		return &struct {
			*SealedStore
			cloud.TempCleaner
		}{ss, tc}
	}
	return ss
}

// sealedOf returns the SealedStore under s, if any.
func sealedOf(s cloud.Storage) *SealedStore {
	if v, ok := s.(interface{ sealedStore() *SealedStore }); ok {
		return v.sealedStore()
	}
	return nil
}

func (s *SealedStore) sealedStore() *SealedStore { return s }

// Sealing reports whether objects written to s are sealed.
func Sealing(s cloud.Storage) bool {
	ss := sealedOf(s)
	return ss != nil && ss.seal
}

// KeyringOf returns the keyring of a sealed store, or nil.
func KeyringOf(s cloud.Storage) *Keyring {
	if ss := sealedOf(s); ss != nil {
		return ss.keys
	}
	return nil
}

// Put stores r under key, sealed when the store seals.
func (s *SealedStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.write(key, r, size, func(r io.Reader, size int64) error { return s.Storage.Put(ctx, key, r, size) })
}

// Create stores r under key if it is absent, sealed when the store seals.
func (s *SealedStore) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.write(key, r, size, func(r io.Reader, size int64) error { return cloud.Create(ctx, s.Storage, key, r, size) })
}

// write stores r with store, sealed (of unknown size) unless the store
// does not seal or key is exempt.
func (s *SealedStore) write(key string, r io.Reader, size int64, store func(io.Reader, int64) error) error {
	if !s.seal || exempt(key) {
		return store(r, size)
	}
	sr, err := s.sealed(r)
	if err != nil {
		return err
	}
	defer sr.Close()
	return store(sr, cloud.SizeUnknown)
}

// exempt tells the objects that stay readable: a server's identity, which
// holds nothing of the database's.
func exempt(key string) bool { return strings.HasSuffix(key, "/identity") }

// sealed returns the sealed stream of r, produced as it is read.
func (s *SealedStore) sealed(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var outer *Header
	if h, _, ok, err := peekHeader(br); err != nil {
		return nil, err
	} else if ok {
		outer = &Header{Type: h.Type, Codec: codec.None, Encryption: EncryptionAge, Streamed: h.Streamed, Clear: h.Clear}
		if h.Type == "wal" && h.SHA256 != "" && s.keys.mac != nil {
			outer.MAC, outer.MACKey = s.keys.macOf(h.SHA256), s.keys.macID
		}
	}
	pr, pw := io.Pipe()
	go func() {
		var err error
		if outer != nil {
			err = WriteHeader(pw, *outer)
		}
		if err == nil {
			var w io.WriteCloser
			if w, err = s.keys.Seal(pw); err == nil {
				if _, err = io.Copy(w, br); err == nil {
					err = w.Close()
				}
			}
		}
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// peekHeader parses the envelope header at the start of br without
// consuming it; ok is false when br does not start with an envelope. n is
// the header's length in bytes.
func peekHeader(br *bufio.Reader) (h Header, n int, ok bool, err error) {
	pre, _ := br.Peek(12)
	if len(pre) < 12 || !bytes.Equal(pre[:7], magic) {
		return h, 0, false, nil
	}
	l, err := headerLength(pre)
	if err != nil {
		return h, 0, false, err
	}
	b, err := br.Peek(12 + l)
	if err != nil {
		return h, 0, false, fmt.Errorf("%w: reading the header: %v", ErrCorrupt, err)
	}
	if err := json.Unmarshal(b[12:], &h); err != nil {
		return h, 0, false, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	return h, 12 + l, true, nil
}

// Get opens the object under key: a sealed one is opened with the
// keyring's identities and read as it was written; one in the clear is
// read as it is.
func (s *SealedStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.Storage.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(rc, 64<<10)
	h, n, ok, err := peekHeader(br)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	sealed := ok && h.Encryption == EncryptionAge
	if !sealed && !ok {
		pre, _ := br.Peek(len(ageMagic))
		sealed = bytes.Equal(pre, ageMagic)
	}
	if !sealed {
		return readCloser{br, rc}, nil
	}
	if ok {
		br.Discard(n)
	}
	r, err := s.keys.Open(br)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return readCloser{r, rc}, nil
}

type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }

// ClearHeader reads the envelope header of the object under key as it is
// stored: for a sealed object, what its outer header says without opening
// it (Encryption "age", MAC, Clear); for one in the clear, its header.
func ClearHeader(ctx context.Context, store cloud.Storage, key string) (Header, error) {
	rc, err := Unsealed(store).Get(ctx, key)
	if err != nil {
		return Header{}, err
	}
	defer rc.Close()
	h, _, ok, err := peekHeader(bufio.NewReaderSize(rc, 4096))
	if err == nil && !ok {
		err = fmt.Errorf("%w: not a Cellar object (bad magic)", ErrCorrupt)
	}
	if err != nil {
		return Header{}, fmt.Errorf("%s: %w", key, err)
	}
	return h, nil
}

// Unsealed returns the store under a SealedStore, which reads and writes
// objects as they are stored; s itself otherwise.
func Unsealed(s cloud.Storage) cloud.Storage {
	if ss := sealedOf(s); ss != nil {
		return ss.Storage
	}
	return s
}
