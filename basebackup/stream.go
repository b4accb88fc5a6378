package basebackup

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/pg"
)

// runStream takes the backup with BASE_BACKUP over a replication
// connection, for a server whose data directory Cellar cannot read. The
// tar archives are read as they arrive and repacked into Cellar's parts:
// the same catalog, restore and verify as a local backup. Every file is
// checked against PostgreSQL's own backup_manifest (CRC-32C), which is
// stored with the backup.
func (b *backup) runStream(ctx context.Context, srv *Server, begin time.Time) (*catalog.Manifest, error) {
	o := b.o
	label := "cellar backup " + b.id
	rc, err := pg.DialReplication(ctx, o.StreamConninfo, "cellar_backup")
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	o.Progress.Stage("checkpoint")
	o.Log.Info("starting the backup over the replication protocol", "server", o.Server, "backup", b.id, "fast_checkpoint", o.Fast)
	bb, err := rc.StartBaseBackup(ctx, label, o.Fast)
	if err != nil {
		return nil, err
	}
	o.Progress.Stage("copying")
	o.Progress.Start(0)
	sw, err := newStreamWriter(ctx, b)
	if err != nil {
		return nil, err
	}
	defer sw.seen.Close()
	var label0, tmap []byte
	var pgManifest *os.File
	defer func() {
		if pgManifest != nil {
			pgManifest.Close()
		}
	}()
	for {
		arc, err := bb.NextArchive()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, sw.abort(err)
		}
		if arc.Manifest {
			// Spooled to an unlinked file: it is read twice, and has a
			// line for every file.
			if pgManifest, err = spool(io.LimitReader(bb, 1<<30)); err != nil {
				return nil, sw.abort(fmt.Errorf("PostgreSQL's backup_manifest: %w", err))
			}
			continue
		}
		prefix := ""
		if arc.Location != "" {
			oid, ok := tablespaceOID(bb.Tablespaces, arc.Location)
			if !ok {
				return nil, sw.abort(fmt.Errorf("BASE_BACKUP sent an archive for %s, which is no tablespace it announced", arc.Location))
			}
			prefix = "pg_tblspc/" + strconv.FormatUint(uint64(oid), 10)
			if err := sw.addEntry(catalog.File{Path: prefix, Type: catalog.TypeDir, Mode: 0o700, MTime: begin}); err != nil {
				return nil, sw.abort(err)
			}
			prefix += "/"
		}
		tr := tar.NewReader(bb)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, sw.abort(fmt.Errorf("reading the archive %s: %w", arc.Name, err))
			}
			name := prefix + strings.TrimSuffix(path.Clean(hdr.Name), "/")
			f := catalog.File{Path: name, Mode: uint32(hdr.Mode & 0o7777), MTime: hdr.ModTime.UTC()}
			switch hdr.Typeflag {
			case tar.TypeDir:
				f.Type = catalog.TypeDir
				err = sw.addEntry(f)
			case tar.TypeSymlink:
				f.Type, f.Link = catalog.TypeSymlink, hdr.Linkname
				err = sw.addEntry(f)
			case tar.TypeReg:
				f.Type, f.Size = catalog.TypeFile, hdr.Size
				if name == "backup_label" || name == "tablespace_map" {
					// Kept for the last part, as a local backup has them.
					data, rerr := io.ReadAll(tr)
					if rerr != nil {
						return nil, sw.abort(rerr)
					}
					if name == "backup_label" {
						label0 = data
					} else {
						tmap = data
					}
					continue
				}
				err = sw.add(f, tr, o.CorruptInTransit == name)
			}
			if err != nil {
				return nil, sw.abort(err)
			}
		}
	}
	parts, err := sw.close()
	if err != nil {
		return nil, err
	}
	end, endTL, err := bb.Finish()
	if err != nil {
		return nil, err
	}
	if len(label0) == 0 {
		return nil, errors.New("BASE_BACKUP sent no backup_label")
	}
	if pgManifest == nil {
		return nil, errors.New("BASE_BACKUP sent no backup_manifest")
	}
	received := []smallFile{{name: "backup_label", data: label0}, {name: "tablespace_map", data: tmap}}
	for _, f := range received {
		if f.data != nil { // received (maybe empty: the tablespace_map of a cluster without tablespaces)
			if err := sw.seenFile(f.name, int64(len(f.data)), crcHex(crc32.Checksum(f.data, castagnoli))); err != nil {
				return nil, err
			}
		}
	}
	if err := sw.checkPGManifest(pgManifest); err != nil {
		return nil, err
	}
	o.Progress.Stage("stopping")
	meta, err := b.writeMeta(ctx, append(received, smallFile{name: "backup_manifest", spool: pgManifest}))
	if err != nil {
		return nil, err
	}
	o.Progress.Done()
	return b.record(ctx, srv, taken{
		method: "stream", label: label, begin: begin, parts: append(parts, meta),
		startLSN: bb.Start, endLSN: end, endTimeline: endTL, backupLabel: string(label0), tablespaceMap: string(tmap),
	})
}

func tablespaceOID(ts []pg.BackupTablespace, location string) (uint32, bool) {
	for _, t := range ts {
		if t.Location == location {
			return t.OID, true
		}
	}
	return 0, false
}

// streamWriter writes the entries of a stream into parts, one after
// another: the next part fills while the previous one's upload ends. What
// it received is noted for the check against PostgreSQL's backup_manifest
// in an unlinked temporary file and a sum, not in memory.
type streamWriter struct {
	b   *backup
	ctx context.Context
	buf []byte
	p   *partWriter
	sem chan struct{} // parts finishing at once
	wg  sync.WaitGroup

	seen    *os.File // a JSON line [path, size, crc] per file received
	seenBuf *bufio.Writer
	sum     manifestSum

	mu    sync.Mutex
	parts []catalog.Part
	err   error
}

func newStreamWriter(ctx context.Context, b *backup) (*streamWriter, error) {
	seen, err := tempFile()
	if err != nil {
		return nil, err
	}
	return &streamWriter{b: b, ctx: ctx, sem: make(chan struct{}, 2), seen: seen, seenBuf: bufio.NewWriterSize(seen, 256<<10)}, nil
}

// part returns the part being filled, opening one if needed.
func (s *streamWriter) part() (*partWriter, error) {
	if err := s.failed(); err != nil {
		return nil, err
	}
	if s.p == nil {
		p, err := s.b.openPart(s.ctx, s.b.nextPart())
		if err != nil {
			return nil, err
		}
		s.p = p
	}
	return s.p, nil
}

// addEntry writes a directory or a symlink.
func (s *streamWriter) addEntry(f catalog.File) error {
	p, err := s.part()
	if err != nil {
		return err
	}
	return s.maybeFinish(p.add(entry{File: f}, nil))
}

// add writes one regular file of size f.Size from r. With corrupt (a test
// hook), the file's first byte is changed as it arrives, as damage in
// transit would.
func (s *streamWriter) add(f catalog.File, r io.Reader, corrupt bool) error {
	p, err := s.part()
	if err != nil {
		return err
	}
	if s.buf == nil {
		s.buf = make([]byte, 256<<10)
	}
	var src io.Reader = r
	if corrupt {
		src = &flipFirst{r: r}
	}
	crc := crc32.New(castagnoli)
	if err := p.addReader(f, io.TeeReader(src, crc), s.buf, s.b.progress, false); err != nil {
		return fmt.Errorf("reading %s from the stream: %w", f.Path, err)
	}
	if err := s.seenFile(f.Path, f.Size, crcHex(crc.Sum32())); err != nil {
		return err
	}
	return s.maybeFinish(nil)
}

// seenFile notes a file received, for checkPGManifest.
func (s *streamWriter) seenFile(path string, size int64, crc string) error {
	s.sum.add(path, size, crc)
	js, err := json.Marshal([]any{path, size, crc})
	if err != nil {
		return err
	}
	s.seenBuf.Write(js)
	return s.seenBuf.WriteByte('\n')
}

// maybeFinish finishes the part being filled once it is full.
func (s *streamWriter) maybeFinish(err error) error {
	if err != nil {
		return err
	}
	if p := s.p; p.raw.n >= s.b.o.PartSize || p.list.Len() >= maxPartEntries {
		s.p = nil
		s.finish(p)
	}
	return nil
}

// finish closes a part in the background, at most two at once.
func (s *streamWriter) finish(p *partWriter) {
	s.sem <- struct{}{}
	s.wg.Go(func() {
		defer func() { <-s.sem }()
		part, err := p.finish(s.ctx)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.err = errors.Join(s.err, err)
			return
		}
		s.parts = append(s.parts, part)
	})
}

func (s *streamWriter) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// close finishes the last part and waits for every part to be durable.
func (s *streamWriter) close() ([]catalog.Part, error) {
	if s.p != nil {
		s.finish(s.p)
		s.p = nil
	}
	s.wg.Wait()
	return s.parts, s.err
}

// abort cancels the part being written, waits for the others and returns
// err; the caller's failure handling removes the parts.
func (s *streamWriter) abort(err error) error {
	if s.p != nil {
		s.p.abort(err)
		s.p = nil
	}
	s.wg.Wait()
	return err
}

// castagnoli is CRC-32C, PostgreSQL's manifest checksum that costs the
// server least to compute (Cellar asks for it and keeps SHA-256 itself).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcHex writes a CRC-32C as PostgreSQL's manifest does: the hex of its
// bytes in the server's (little-endian) order.
func crcHex(c uint32) string {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], c)
	return hex.EncodeToString(b[:])
}

// flipFirst changes the first byte read through it: damage in transit,
// for the test hook.
type flipFirst struct {
	r    io.Reader
	done bool
}

func (f *flipFirst) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && !f.done {
		p[0] ^= 0xff
		f.done = true
	}
	return n, err
}

// manifestSum is an order-independent digest of a set of files (path,
// size, CRC-32C): the sum, modulo 2^256, of the SHA-256 of each. Two sets
// with equal sums and counts are equal but with negligible probability,
// so the streamed files and PostgreSQL's backup_manifest are compared
// without holding either.
type manifestSum struct {
	n   int
	acc [4]uint64
}

func (m *manifestSum) add(path string, size int64, crc string) {
	h := sha256.Sum256([]byte(path + "\x00" + strconv.FormatInt(size, 10) + "\x00" + crc))
	var carry uint64
	for i := 3; i >= 0; i-- {
		v := binary.BigEndian.Uint64(h[8*i:])
		m.acc[i], carry = bits.Add64(m.acc[i], v, carry)
	}
	m.n++
}

// pgManifestFile is a file as PostgreSQL's backup_manifest lists it.
type pgManifestFile struct {
	Path        string `json:"Path"`
	EncodedPath string `json:"Encoded-Path"`
	Size        int64  `json:"Size"`
	Algorithm   string `json:"Checksum-Algorithm"`
	Checksum    string `json:"Checksum"`
}

// eachPGManifestFile decodes the Files of PostgreSQL's backup_manifest
// one at a time.
func eachPGManifestFile(r io.Reader, fn func(path string, f pgManifestFile) error) error {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 256<<10))
	bad := func(err error) error { return fmt.Errorf("PostgreSQL's backup_manifest: %w", err) }
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return bad(fmt.Errorf("not a JSON object (%v)", err))
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return bad(err)
		}
		if key != "Files" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return bad(err)
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return bad(fmt.Errorf("its Files member is not an array (%v)", err))
		}
		for dec.More() {
			var f pgManifestFile
			if err := dec.Decode(&f); err != nil {
				return bad(err)
			}
			p := f.Path
			if f.EncodedPath != "" {
				b, err := hex.DecodeString(f.EncodedPath)
				if err != nil {
					return bad(fmt.Errorf("Encoded-Path %q", f.EncodedPath))
				}
				p = string(b)
			}
			switch strings.ToUpper(f.Algorithm) {
			case "CRC32C":
				f.Checksum = strings.ToLower(f.Checksum)
			default:
				return fmt.Errorf("PostgreSQL's backup_manifest has %s checksums, where Cellar asks for CRC32C", f.Algorithm)
			}
			if err := fn(p, f); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return bad(err)
		}
	}
	return nil
}

// checkPGManifest checks the files received against PostgreSQL's
// backup_manifest: the same files, sizes and checksums (CRC-32C). The
// sums are compared first; only when they differ are both read again to
// name the file.
func (s *streamWriter) checkPGManifest(pgm *os.File) error {
	if err := s.seenBuf.Flush(); err != nil {
		return err
	}
	var listed manifestSum
	if _, err := pgm.Seek(0, io.SeekStart); err != nil {
		return err
	}
	err := eachPGManifestFile(pgm, func(p string, f pgManifestFile) error {
		listed.add(p, f.Size, f.Checksum)
		return nil
	})
	if err != nil {
		return err
	}
	if listed == s.sum {
		return nil
	}
	return s.namePGManifestDifference(pgm)
}

// namePGManifestDifference finds a file where what was received and
// PostgreSQL's backup_manifest differ. It holds the manifest's files in
// memory: it runs only when the backup fails.
func (s *streamWriter) namePGManifestDifference(pgm *os.File) error {
	if _, err := pgm.Seek(0, io.SeekStart); err != nil {
		return err
	}
	listed := map[string]pgManifestFile{}
	err := eachPGManifestFile(pgm, func(p string, f pgManifestFile) error {
		listed[p] = f
		return nil
	})
	if err != nil {
		return err
	}
	if _, err := s.seen.Seek(0, io.SeekStart); err != nil {
		return err
	}
	dec := json.NewDecoder(bufio.NewReader(s.seen))
	for {
		var got struct {
			path, crc string
			size      int64
		}
		var row []any
		if err := dec.Decode(&row); err == io.EOF {
			break
		} else if err != nil || len(row) != 3 {
			return fmt.Errorf("reading back the files received: %v", err)
		}
		got.path, _ = row[0].(string)
		size, _ := row[1].(float64)
		got.size = int64(size)
		got.crc, _ = row[2].(string)
		w, ok := listed[got.path]
		switch {
		case !ok:
			return fmt.Errorf("file %s was streamed but is not in PostgreSQL's backup_manifest", got.path)
		case w.Size != got.size:
			return fmt.Errorf("file %s: %d bytes streamed, PostgreSQL's backup_manifest says %d: damaged in transit", got.path, got.size, w.Size)
		case w.Checksum != got.crc:
			return fmt.Errorf("file %s: its checksum differs from PostgreSQL's backup_manifest: damaged in transit", got.path)
		}
		delete(listed, got.path)
	}
	for p := range listed {
		return fmt.Errorf("file %s is in PostgreSQL's backup_manifest but was not streamed", p)
	}
	return errors.New("the files streamed differ from PostgreSQL's backup_manifest")
}

// tempFile creates a temporary file and unlinks it at once: it goes away
// when closed, and a killed run leaves nothing behind.
func tempFile() (*os.File, error) {
	f, err := os.CreateTemp("", "cellar-stream-*")
	if err != nil {
		return nil, fmt.Errorf("a temporary file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// spool copies r to an unlinked temporary file.
func spool(r io.Reader) (*os.File, error) {
	f, err := tempFile()
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
