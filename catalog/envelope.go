package catalog

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/cellar-backup/cellar/catalog/codec"
)

// Every object Cellar stores starts with an envelope header:
//
//	magic     8 bytes  "CELLAR\x00" followed by the format version (1)
//	length    4 bytes  big-endian length of the JSON header that follows
//	header    JSON     Header
//	payload            the original bytes, compressed with Header.Codec
//
// The header records what is needed to check the payload on the way back:
// the codec, the original size and the SHA-256 of the original bytes.

// FormatVersion is the envelope version this Cellar writes. It reads
// every version up to this one.
const FormatVersion = 1

var magic = []byte("CELLAR\x00")

const maxHeaderLen = 1 << 16

// Header describes an object's payload.
type Header struct {
	// Type is what the object is: "wal", "identity", ...
	Type string `json:"type"`
	// Name is the object's own name, e.g. the WAL file name.
	Name string `json:"name,omitempty"`
	// Codec compresses the payload: zstd, s2, gzip or none.
	Codec codec.Codec `json:"codec"`
	// Size and SHA256 describe the original (uncompressed) bytes.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Encryption is how the payload is sealed: "none", or "age" for an
	// object of a sealed repository, whose payload is the age stream of
	// the whole original object (see SealedStore); such an outer header
	// has only Type, Encryption, MAC, MACKey and Clear.
	Encryption string `json:"encryption"`
	// MAC is, in a sealed WAL object's outer header, the HMAC-SHA256 of
	// its SHA256 under the key that MACKey names (see MACOf), so that a
	// repeated push is recognised without opening the object.
	MAC    string `json:"mac,omitempty"`
	MACKey string `json:"mac_key,omitempty"`
	// Clear is what the catalog reads of a sealed object without opening
	// it: a manifest's catalog fields, a marker.
	Clear json.RawMessage `json:"clear,omitempty"`
	// Streamed marks a .partial segment that receive-wal uploads and
	// replaces as the segment grows; its Size is the bytes received so
	// far, not a whole segment. wal-push replaces such an object.
	Streamed bool `json:"streamed,omitempty"`
	// Offset is where a streamed chunk (type wal-chunk) starts in its
	// segment, Name.
	Offset int64 `json:"offset,omitempty"`
	// SystemIdentifier is the cluster's, for WAL segments.
	SystemIdentifier uint64 `json:"system_identifier,omitempty,string"`
}

// ErrCorrupt marks an object whose envelope or payload does not check out.
var ErrCorrupt = errors.New("corrupt object")

// WriteHeader writes the envelope header.
func WriteHeader(w io.Writer, h Header) error {
	if h.Encryption == "" {
		h.Encryption = "none"
	}
	js, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var pre [12]byte
	copy(pre[:], magic)
	pre[7] = FormatVersion
	binary.BigEndian.PutUint32(pre[8:], uint32(len(js)))
	if _, err := w.Write(pre[:]); err != nil {
		return err
	}
	_, err = w.Write(js)
	return err
}

// ReadHeader reads and checks the envelope header, leaving r at the start
// of the payload.
func ReadHeader(r io.Reader) (Header, error) {
	var pre [12]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return Header{}, fmt.Errorf("%w: reading the envelope: %v", ErrCorrupt, err)
	}
	if !bytes.Equal(pre[:7], magic) {
		return Header{}, fmt.Errorf("%w: not a Cellar object (bad magic)", ErrCorrupt)
	}
	if v := pre[7]; v == 0 || v > FormatVersion {
		return Header{}, fmt.Errorf("object format version %d is newer than this Cellar reads (%d): upgrade cellar", v, FormatVersion)
	}
	n, err := headerLength(pre[:])
	if err != nil {
		return Header{}, err
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(r, js); err != nil {
		return Header{}, fmt.Errorf("%w: reading the header: %v", ErrCorrupt, err)
	}
	var h Header
	if err := json.Unmarshal(js, &h); err != nil {
		return Header{}, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if _, err := codec.Parse(string(h.Codec)); err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	switch h.Encryption {
	case EncryptionNone:
	case EncryptionAge:
		return Header{}, fmt.Errorf("%w: the object is encrypted (age): set encryption_identity_file to a private key that opens it", ErrNoIdentity)
	default:
		return Header{}, fmt.Errorf("object is encrypted with %q, which this Cellar cannot read: upgrade cellar", h.Encryption)
	}
	return h, nil
}

// headerLength is the JSON header's length that an envelope's first 12
// bytes give, checked.
func headerLength(pre []byte) (int, error) {
	n := binary.BigEndian.Uint32(pre[8:12])
	if n == 0 || n > maxHeaderLen {
		return 0, fmt.Errorf("%w: header length %d", ErrCorrupt, n)
	}
	return int(n), nil
}

// Digest computes the size and SHA-256 of a stream, as Header records them.
func Digest(r io.Reader) (int64, string, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 1<<20))
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// Encode writes the envelope for h and the compressed contents of r to w.
// h.Size and h.SHA256 must already describe r; Encode checks that they do
// and fails (before the writer's consumer can commit) when r changed.
func Encode(w io.Writer, h Header, level int, r io.Reader) error {
	if err := WriteHeader(w, h); err != nil {
		return err
	}
	n, got, err := compress(w, h.Codec, level, r)
	if err != nil {
		return err
	}
	if n != h.Size || got != h.SHA256 {
		return fmt.Errorf("the file changed while it was read (%d bytes, sha256 %s; expected %d bytes, %s)", n, got, h.Size, h.SHA256)
	}
	return nil
}

// Decode returns a reader of the original bytes of an object whose
// envelope h was just read from r. It fails with ErrCorrupt, at the end of
// the stream at the latest, when the bytes do not match h's size and
// checksum; a reader must not trust data before it has seen io.EOF.
func Decode(r io.Reader, h Header) (io.ReadCloser, error) {
	zr, err := h.Codec.NewReader(bufio.NewReaderSize(r, 256<<10))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return &verifier{r: zr, h: h, sum: sha256.New()}, nil
}

type verifier struct {
	r   io.ReadCloser
	h   Header
	sum hash.Hash
	n   int64
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	if err != nil && err != io.EOF && errors.Is(err, codec.ErrCorrupt) {
		return n, fmt.Errorf("%w: %s: %v", ErrCorrupt, v.h.Name, err)
	}
	v.sum.Write(p[:n])
	v.n += int64(n)
	if v.n > v.h.Size {
		return n, fmt.Errorf("%w: %s is longer than the %d bytes its header records", ErrCorrupt, v.h.Name, v.h.Size)
	}
	if err == io.EOF {
		if v.n != v.h.Size {
			return n, fmt.Errorf("%w: %s has %d bytes, its header records %d", ErrCorrupt, v.h.Name, v.n, v.h.Size)
		}
		if got := hex.EncodeToString(v.sum.Sum(nil)); got != v.h.SHA256 {
			return n, fmt.Errorf("%w: %s: checksum mismatch (sha256 %s, header records %s)", ErrCorrupt, v.h.Name, got, v.h.SHA256)
		}
	}
	return n, err
}

func (v *verifier) Close() error { return v.r.Close() }

// compress writes r to w compressed with c, and returns the length and
// SHA-256 of what it read.
func compress(w io.Writer, c codec.Codec, level int, r io.Reader) (int64, string, error) {
	zw, err := c.NewWriter(w, level)
	if err != nil {
		return 0, "", err
	}
	sum := sha256.New()
	n, err := io.CopyBuffer(zw, io.TeeReader(r, sum), make([]byte, 256<<10))
	if err != nil {
		return n, "", err
	}
	if err := zw.Close(); err != nil {
		return n, "", err
	}
	return n, hex.EncodeToString(sum.Sum(nil)), nil
}
