package catalog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
)

// What a backup holds is stored apart from its manifest (version 2), so
// that the catalog reads a few kilobytes per backup whatever the number of
// files, and restore and verify read file lists as streams:
//
//	<server>/backups/<id>.manifest      the summary: no file, no part
//	<server>/base/<id>/index            the parts, one JSON line each
//	<server>/base/<id>/part-NNNNN.files a part's entries, one JSON line
//	                                    each, in the order of its tar stream
//
// Each object names the next by key, size and SHA-256 of its payload, so
// that trust flows from the manifest down to every byte restored.

// ObjectRef names a stored object and the payload its envelope must hold.
type ObjectRef struct {
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// IndexKey is the key of a backup's index of parts.
func IndexKey(server, id string) string { return PartsPrefix(server, id) + "index" }

// FileListKey is the key of the file list of part n of a backup.
func FileListKey(server, id string, n int) string {
	return fmt.Sprintf("%spart-%05d.files", PartsPrefix(server, id), n)
}

// Envelope types of the objects of a version 2 backup.
const (
	typeIndex    = "part-index"
	typeFileList = "file-list"
)

// ComparePaths orders manifest paths component by component ("base/1"
// and its files before "base/1.old"), the order in which a depth-first walk
// of sorted directories meets them. The lists of a local backup's parts
// are in this order, and each part's paths follow the previous part's.
func ComparePaths(a, b string) int {
	for {
		ac, arest, amore := strings.Cut(a, "/")
		bc, brest, bmore := strings.Cut(b, "/")
		if c := strings.Compare(ac, bc); c != 0 {
			return c
		}
		switch {
		case !amore && !bmore:
			return 0
		case !amore:
			return -1
		case !bmore:
			return 1
		}
		a, b = arest, brest
	}
}

// ObjectWriter gathers an object's payload compressed in memory (a file
// list costs a few dozen bytes a file, a block map 16 bytes a page) and
// stores it as one object: JSON lines (Add) or raw bytes (Write). It is
// for one goroutine.
type ObjectWriter struct {
	typ, name string
	buf       bytes.Buffer
	zw        io.WriteCloser
	sum       hash.Hash
	n         int64
	w         io.Writer
	enc       *json.Encoder
	count     int
}

// NewFileList starts the file list of the part stored under key.
func NewFileList(key string) *ObjectWriter { return newObjectWriter(typeFileList, key) }

// newObjectWriter starts an object of the given envelope type and name.
func newObjectWriter(typ, name string) *ObjectWriter {
	w := &ObjectWriter{typ: typ, name: name, sum: sha256.New()}
	zw, err := codec.Zstd.NewWriter(&w.buf, 0)
	if err != nil {
		panic(err) // level 0 is always valid
	}
	w.zw = zw
	w.w = io.MultiWriter(zw, w.sum, countWriter{&w.n})
	w.enc = json.NewEncoder(w.w)
	w.enc.SetEscapeHTML(false)
	return w
}

// Write appends raw bytes to the payload.
func (w *ObjectWriter) Write(p []byte) (int, error) { return w.w.Write(p) }

// Size is the payload's length so far.
func (w *ObjectWriter) Size() int64 { return w.n }

type countWriter struct{ n *int64 }

func (c countWriter) Write(p []byte) (int, error) { *c.n += int64(len(p)); return len(p), nil }

// Add appends v as one line.
func (w *ObjectWriter) Add(v any) error {
	w.count++
	return w.enc.Encode(v)
}

// Len is the number of lines added.
func (w *ObjectWriter) Len() int { return w.count }

// Store writes the object under key with a conditional create and returns
// its reference.
func (w *ObjectWriter) Store(ctx context.Context, store cloud.Storage, key string) (ObjectRef, error) {
	if err := w.zw.Close(); err != nil {
		return ObjectRef{}, err
	}
	ref := ObjectRef{Key: key, Size: w.n, SHA256: hex.EncodeToString(w.sum.Sum(nil))}
	var obj bytes.Buffer
	obj.Grow(w.buf.Len() + 256)
	if err := WriteHeader(&obj, Header{Type: w.typ, Name: w.name, Codec: codec.Zstd, Size: ref.Size, SHA256: ref.SHA256}); err != nil {
		return ref, err
	}
	obj.Write(w.buf.Bytes())
	w.buf = bytes.Buffer{}
	return ref, cloud.Create(ctx, store, key, &obj, int64(obj.Len()))
}

// readLines streams the JSON lines of the object ref names, checking that
// its envelope is of type typ and holds the payload ref records; the
// checksum is known good only when it returns nil, so a caller acts on
// what fn sees only once the whole stream checked out.
func readLines(ctx context.Context, store cloud.Storage, ref ObjectRef, typ string, fn func(*json.Decoder) error) error {
	return readObject(ctx, store, ref, typ, func(body io.Reader) error {
		dec := json.NewDecoder(body)
		for {
			err := fn(dec)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				if isJSONError(err) {
					return fmt.Errorf("%w: %v", ErrCorrupt, err)
				}
				return err
			}
		}
	})
}

// readObject streams the payload of the object ref names to fn, checking
// that its envelope is of type typ and holds the payload ref records; what
// fn leaves unread is read, so that the checksum is checked. The payload
// is known good only when readObject returns nil.
func readObject(ctx context.Context, store cloud.Storage, ref ObjectRef, typ string, fn func(io.Reader) error) error {
	rc, err := store.Get(ctx, ref.Key)
	if err != nil {
		return err
	}
	defer rc.Close()
	h, err := ReadHeader(rc)
	if err != nil {
		return fmt.Errorf("%s: %w", ref.Key, err)
	}
	if h.Type != typ || h.Size != ref.Size || h.SHA256 != ref.SHA256 {
		return fmt.Errorf("%s: %w: it holds a %s of %d bytes with sha256 %s, the backup records a %s of %d bytes with %s",
			ref.Key, ErrCorrupt, h.Type, h.Size, h.SHA256, typ, ref.Size, ref.SHA256)
	}
	body, err := Decode(rc, h)
	if err != nil {
		return fmt.Errorf("%s: %w", ref.Key, err)
	}
	defer body.Close()
	if err := fn(body); err != nil {
		if errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("%s: %w", ref.Key, err)
		}
		return err
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return fmt.Errorf("%s: %w", ref.Key, err)
	}
	return nil
}

func isJSONError(err error) bool {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	return errors.As(err, &se) || errors.As(err, &te) || errors.Is(err, io.ErrUnexpectedEOF)
}

// WriteIndex stores a backup's index of parts, in part order.
func WriteIndex(ctx context.Context, store cloud.Storage, server, id string, parts []Part) (ObjectRef, error) {
	w := newObjectWriter(typeIndex, id)
	for _, p := range parts {
		if err := w.Add(p); err != nil {
			return ObjectRef{}, err
		}
	}
	return w.Store(ctx, store, IndexKey(server, id))
}

// Contents reads what a finished backup holds: its parts, and each part's
// entries as a stream. For a version 1 manifest, which holds both, the
// whole manifest is read once.
type Contents struct {
	store cloud.Storage
	parts []Part
	v1    map[int][]File // version 1: each part's entries in tar order
}

// manifestLists is what a version 1 manifest holds beside the summary.
type manifestLists struct {
	Parts []Part `json:"parts"`
	Files []File `json:"files"`
}

// OpenContents reads the parts of the backup m describes. Their number
// grows with the data (a part holds up to backup_part_size), not with the
// number of files.
func OpenContents(ctx context.Context, store cloud.Storage, m *Manifest) (*Contents, error) {
	if m.Sealed {
		return nil, fmt.Errorf("%s: %w: the backup is encrypted and no encryption_identity_file is configured that opens it", ManifestKey(m.Server, m.ID), ErrNoIdentity)
	}
	c := &Contents{store: store}
	if m.Version == 1 {
		var l manifestLists
		if err := readManifestInto(ctx, store, ManifestKey(m.Server, m.ID), &l); err != nil {
			return nil, err
		}
		c.parts, c.v1 = l.Parts, map[int][]File{}
		for _, f := range l.Files {
			c.v1[f.Part] = append(c.v1[f.Part], f)
		}
		for _, fs := range c.v1 {
			sort.SliceStable(fs, func(i, j int) bool { return fs[i].Offset < fs[j].Offset })
		}
		return c, nil
	}
	if m.Index == nil {
		return nil, fmt.Errorf("%s: %w: a version %d manifest without an index", ManifestKey(m.Server, m.ID), ErrCorrupt, m.Version)
	}
	err := readLines(ctx, store, *m.Index, typeIndex, func(dec *json.Decoder) error {
		var p Part
		if err := dec.Decode(&p); err != nil {
			return err
		}
		if p.List == nil || p.Number != len(c.parts)+1 {
			return fmt.Errorf("%w: part %d is out of place or has no file list", ErrCorrupt, p.Number)
		}
		c.parts = append(c.parts, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", m.ID, err)
	}
	if len(c.parts) != m.PartCount {
		return nil, fmt.Errorf("backup %s: %w: the index lists %d parts, the manifest %d", m.ID, ErrCorrupt, len(c.parts), m.PartCount)
	}
	return c, nil
}

// Parts are the backup's parts in part order.
func (c *Contents) Parts() []Part { return c.parts }

// Files calls fn for each entry of part p, in the order of its tar stream.
// The list's checksum is checked at its end: Files returns an error
// wrapping ErrCorrupt then, after fn has seen the entries.
func (c *Contents) Files(ctx context.Context, p Part, fn func(File) error) error {
	if c.v1 != nil {
		for _, f := range c.v1[p.Number] {
			if err := fn(f); err != nil {
				return err
			}
		}
		return nil
	}
	n := 0
	err := readLines(ctx, c.store, *p.List, typeFileList, func(dec *json.Decoder) error {
		var f File
		if err := dec.Decode(&f); err != nil {
			return err
		}
		n++
		f.Part = p.Number
		return fn(f)
	})
	if err == nil && n != p.Files {
		err = fmt.Errorf("%s: %w: %d entries, the index records %d", p.List.Key, ErrCorrupt, n, p.Files)
	}
	return err
}

// AllFiles calls fn for every entry of the backup, part after part. For a
// local backup that is path order (ComparePaths), but for the part that
// holds the files PostgreSQL returned at the stop (the last one).
func (c *Contents) AllFiles(ctx context.Context, fn func(File) error) error {
	for _, p := range c.parts {
		if err := c.Files(ctx, p, fn); err != nil {
			return err
		}
	}
	return nil
}
