package basebackup

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path"
	"sort"
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
	sw := &streamWriter{b: b, ctx: ctx, sem: make(chan struct{}, 2), crcs: map[string]string{}}
	var others []entry
	var label0, tmap, pgManifest []byte
	for {
		arc, err := bb.NextArchive()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, sw.abort(err)
		}
		if arc.Manifest {
			if pgManifest, err = io.ReadAll(io.LimitReader(bb, 1<<30)); err != nil {
				return nil, sw.abort(err)
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
			others = append(others, entry{File: catalog.File{Path: prefix, Type: catalog.TypeDir, Mode: 0o700, MTime: begin}})
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
				others = append(others, entry{File: f})
			case tar.TypeSymlink:
				f.Type, f.Link = catalog.TypeSymlink, hdr.Linkname
				others = append(others, entry{File: f})
			case tar.TypeReg:
				f.Type, f.Size = catalog.TypeFile, hdr.Size
				if name == "backup_label" || name == "tablespace_map" {
					// Kept for the last part, as a local backup has them.
					data, err := io.ReadAll(tr)
					if err != nil {
						return nil, sw.abort(err)
					}
					if name == "backup_label" {
						label0 = data
					} else {
						tmap = data
					}
					continue
				}
				if err := sw.add(f, tr, o.CorruptInTransit == name); err != nil {
					return nil, sw.abort(err)
				}
			}
		}
	}
	records, parts, err := sw.close()
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
	small := []smallFile{{"backup_label", label0}, {"tablespace_map", tmap}, {"backup_manifest", pgManifest}}
	if err := checkPGManifest(pgManifest, records, sw.crcs, small[:2]); err != nil {
		return nil, err
	}
	o.Progress.Stage("stopping")
	sort.SliceStable(others, func(i, j int) bool { return others[i].Path < others[j].Path })
	meta, metaRecords, err := b.writeMeta(ctx, others, small)
	if err != nil {
		return nil, err
	}
	o.Progress.Done()
	return b.record(ctx, srv, taken{
		method: "stream", label: label, begin: begin, records: append(records, metaRecords...), parts: append(parts, meta),
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

// streamWriter writes the files of a stream into parts, one after
// another: the next part fills while the previous one's upload ends.
type streamWriter struct {
	b   *backup
	ctx context.Context
	buf []byte
	p   *partWriter
	sem chan struct{} // parts finishing at once
	wg  sync.WaitGroup

	mu      sync.Mutex
	crcs    map[string]string // CRC-32C of each file, as PostgreSQL's manifest writes it
	records []catalog.File
	parts   []catalog.Part
	err     error
}

// add writes one regular file of size f.Size from r. With corrupt (a test
// hook), the file's first byte is changed as it arrives, as damage in
// transit would.
func (s *streamWriter) add(f catalog.File, r io.Reader, corrupt bool) error {
	if err := s.failed(); err != nil {
		return err
	}
	if s.p == nil {
		p, err := s.b.openPart(s.ctx, s.b.nextPart())
		if err != nil {
			return err
		}
		s.p = p
	}
	if s.buf == nil {
		s.buf = make([]byte, 256<<10)
	}
	p := s.p
	hdr := &tar.Header{Name: f.Path, Mode: int64(f.Mode), ModTime: f.MTime, Typeflag: tar.TypeReg, Size: f.Size}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return err
	}
	f.Part, f.Offset = p.number, p.raw.n
	var src io.Reader = r
	if corrupt {
		src = &flipFirst{r: r}
	}
	crc := crc32.New(castagnoli)
	sum, err := p.copyBody(f, io.TeeReader(src, crc), s.buf, s.b.progress, false)
	if err != nil {
		return fmt.Errorf("reading %s from the stream: %w", f.Path, err)
	}
	f.SHA256 = sum
	s.mu.Lock()
	s.crcs[f.Path] = crcHex(crc.Sum32())
	s.mu.Unlock()
	p.files++
	s.mu.Lock()
	s.records = append(s.records, f)
	s.mu.Unlock()
	if p.raw.n >= s.b.o.PartSize {
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
		part, err := p.finish()
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
func (s *streamWriter) close() ([]catalog.File, []catalog.Part, error) {
	if s.p != nil {
		s.finish(s.p)
		s.p = nil
	}
	s.wg.Wait()
	return s.records, s.parts, s.err
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

// checkPGManifest checks every file received against PostgreSQL's
// backup_manifest: the same files, sizes and checksums (CRC-32C, or
// SHA-256 when the manifest has those).
func checkPGManifest(raw []byte, records []catalog.File, crcs map[string]string, small []smallFile) error {
	var man struct {
		Files []struct {
			Path        string `json:"Path"`
			EncodedPath string `json:"Encoded-Path"`
			Size        int64  `json:"Size"`
			Algorithm   string `json:"Checksum-Algorithm"`
			Checksum    string `json:"Checksum"`
		} `json:"Files"`
	}
	if len(raw) == 0 {
		return errors.New("BASE_BACKUP sent no backup_manifest")
	}
	if err := json.Unmarshal(raw, &man); err != nil {
		return fmt.Errorf("PostgreSQL's backup_manifest: %w", err)
	}
	type sums struct {
		size        int64
		sha256, crc string
	}
	listed := map[string]sums{}
	for _, f := range man.Files {
		p := f.Path
		if f.EncodedPath != "" {
			b, err := hex.DecodeString(f.EncodedPath)
			if err != nil {
				return fmt.Errorf("PostgreSQL's backup_manifest: Encoded-Path %q", f.EncodedPath)
			}
			p = string(b)
		}
		w := sums{size: f.Size}
		switch strings.ToUpper(f.Algorithm) {
		case "SHA256":
			w.sha256 = strings.ToLower(f.Checksum)
		case "CRC32C":
			w.crc = strings.ToLower(f.Checksum)
		default:
			return fmt.Errorf("PostgreSQL's backup_manifest has %s checksums, which Cellar does not check", f.Algorithm)
		}
		listed[p] = w
	}
	got := map[string]sums{}
	for _, r := range records {
		if r.Type == catalog.TypeFile {
			got[r.Path] = sums{r.Size, r.SHA256, crcs[r.Path]}
		}
	}
	for _, f := range small {
		if f.data != nil { // received (maybe empty: the tablespace_map of a cluster without tablespaces)
			got[f.name] = sums{int64(len(f.data)), sha256Hex(f.data), crcHex(crc32.Checksum(f.data, castagnoli))}
		}
	}
	for p, g := range got {
		w, ok := listed[p]
		switch {
		case !ok:
			return fmt.Errorf("file %s was streamed but is not in PostgreSQL's backup_manifest", p)
		case w.size != g.size:
			return fmt.Errorf("file %s: %d bytes streamed, PostgreSQL's backup_manifest says %d: damaged in transit", p, g.size, w.size)
		case w.sha256 != "" && w.sha256 != g.sha256, w.crc != "" && w.crc != g.crc:
			return fmt.Errorf("file %s: its checksum differs from PostgreSQL's backup_manifest: damaged in transit", p)
		}
	}
	for p := range listed {
		if _, ok := got[p]; !ok {
			return fmt.Errorf("file %s is in PostgreSQL's backup_manifest but was not streamed", p)
		}
	}
	return nil
}
