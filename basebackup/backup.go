// Package basebackup takes a base backup of a running PostgreSQL server
// with the non-exclusive low-level API, reading the data directory itself
// and uploading it as parallel compressed tar parts, and records it in a
// manifest written last.
package basebackup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// DefaultPartSize is the tar stream size at which a part is closed: a
// terabyte makes about 2,000 parts, far below every store's limits, and a
// part is a unit that restore fetches in parallel.
const DefaultPartSize = 512 << 20

// Options configure one backup.
type Options struct {
	Store  cloud.Storage
	Server string
	// Conn is a connection to the server, held for the whole backup.
	Conn *pgx.Conn
	// PGData is the data directory to read; it must be the server's.
	PGData string
	Codec  codec.Codec
	Level  int
	// Parallel is the number of files read, and parts written, at once.
	Parallel int
	// PartSize is the tar stream size at which a part is closed.
	PartSize int64
	// Fast asks for an immediate checkpoint at the start.
	Fast bool
	// WALTimeout bounds the wait for the backup's WAL in the repository.
	WALTimeout time.Duration
	// SwitchPrimaryWAL, when set, closes the current WAL segment on the
	// primary: a backup from a standby calls it so that its last segment
	// is archived without waiting for traffic.
	SwitchPrimaryWAL func(context.Context) error
	Progress         catalog.Progress
	Log              *slog.Logger
	// Now is the clock; nil means time.Now.
	Now           func() time.Time
	CellarVersion string
	// OnStart is called with the backup's id once its marker is stored.
	OnStart func(id string)
	// StreamConninfo, when set, takes the backup with BASE_BACKUP over a
	// replication connection (backup_method = stream) instead of reading
	// PGData.
	StreamConninfo string
	// Type is catalog.TypeFull (or empty), TypeIncr or TypeDiff; Parent,
	// when set, names the backup an incremental builds on. MaxChain is
	// the most backups a restore may have to read (incremental_max_chain):
	// an incremental that would make a longer chain is a full backup.
	Type     string
	Parent   string
	MaxChain int
	// CorruptInTransit is a test hook: the file of that path changes as
	// it arrives from the stream, which the manifest check must catch.
	CorruptInTransit string
}

type backup struct {
	o     Options
	id    string
	lim   codec.Limiter
	mu    sync.Mutex
	parts int // the number of the last part begun
	// Totals of what was stored, for the manifest.
	dataSize  int64
	fileCount int
	spcSize   map[string]int64 // by tablespace oid
	// An incremental's type, parent, the parent's contents and the ids of
	// its chain (the parent's and those it builds on).
	typ            string
	parent         *catalog.Manifest
	parentContents *catalog.Contents
	chain          []string
}

func (b *backup) progress(n int64) { b.o.Progress.Add(n) }

func (o *Options) defaults() {
	if o.Progress == nil {
		o.Progress = catalog.NoProgress{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Parallel < 1 {
		o.Parallel = 1
	}
	if o.PartSize <= 0 {
		o.PartSize = DefaultPartSize
	}
	if o.WALTimeout <= 0 {
		o.WALTimeout = 5 * time.Minute
	}
	if o.Type == "" {
		o.Type = catalog.TypeFull
		if o.Parent != "" {
			o.Type = catalog.TypeIncr
		}
	}
	if o.MaxChain < 1 {
		o.MaxChain = 7
	}
}

// ErrStreamIncremental is the error of an incremental asked of the stream
// method.
var ErrStreamIncremental = errors.New("backup_method = stream takes full backups only: PostgreSQL 15 has no incremental BASE_BACKUP (PostgreSQL 17's is planned); use backup_method = local for incrementals, or --type full")

// Run takes a backup and returns its manifest. A backup that fails leaves
// its marker with status FAILED and no parts (as far as the repository
// lets them be deleted); one that is killed leaves a marker that the
// catalog shows as not done, and parts without a manifest.
func Run(ctx context.Context, o Options) (*catalog.Manifest, error) {
	o.defaults()
	stream := o.StreamConninfo != ""
	switch o.Type {
	case catalog.TypeFull, catalog.TypeIncr, catalog.TypeDiff:
	default:
		return nil, fmt.Errorf("backup type %q: use full, incr or diff", o.Type)
	}
	if stream && o.Type != catalog.TypeFull {
		return nil, ErrStreamIncremental
	}
	pgdata := o.PGData
	if stream {
		pgdata = "" // not read
	}
	srv, err := inspect(ctx, o.Conn, pgdata, !stream)
	if err != nil {
		return nil, err
	}
	if o.PGData == "" {
		o.PGData = srv.DataDirectory
	}
	id, err := catalog.ReadIdentity(ctx, o.Store, o.Server)
	switch {
	case errors.Is(err, cloud.ErrNotExist):
		id, err = catalog.EnsureIdentity(ctx, o.Store, o.Server, catalog.Identity{
			SystemIdentifier: srv.SystemIdentifier, WALSegmentSize: srv.WALSegmentSize,
			CreatedAt: o.Now().UTC(), CreatedBy: "cellar backup " + o.CellarVersion,
		})
		if err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	}
	if id.SystemIdentifier != srv.SystemIdentifier {
		return nil, fmt.Errorf("the repository of server %s belongs to the cluster %d, PostgreSQL is cluster %d: point the server at its own repository",
			o.Server, id.SystemIdentifier, srv.SystemIdentifier)
	}

	probe := &backup{o: o, typ: o.Type}
	parent, err := probe.chooseParent(ctx, srv)
	if err != nil {
		return nil, err
	}

	// Ids are start times to the second: a backup that starts in the
	// same second as another (one killed a moment ago) takes the next.
	var (
		begin  time.Time
		b      *backup
		marker catalog.Started
	)
	host, _ := os.Hostname()
	for attempt := 1; ; attempt++ {
		begin = o.Now().UTC()
		b = &backup{o: o, id: catalog.NewBackupID(begin), lim: codec.NewLimiter(0), typ: probe.typ, parent: parent, parentContents: probe.parentContents, chain: probe.chain}
		marker = catalog.Started{ID: b.id, Server: o.Server, Status: catalog.StatusStarted, Host: host, PID: os.Getpid(), BeginTime: begin}
		// A finished backup of that second has only its manifest left.
		if _, serr := o.Store.Stat(ctx, catalog.ManifestKey(o.Server, b.id)); serr == nil {
			err = cloud.ErrExist
		} else {
			err = catalog.PutJSON(ctx, o.Store, catalog.StartedKey(o.Server, b.id), "backup-started", marker, true)
		}
		if !errors.Is(err, cloud.ErrExist) {
			break
		}
		if attempt == 3 {
			return nil, fmt.Errorf("a backup with id %s already exists: start the next backup a second later", b.id)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Until(begin.Truncate(time.Second).Add(time.Second))):
		}
	}
	if err != nil {
		return nil, err
	}
	if o.OnStart != nil {
		o.OnStart(b.id)
	}
	run := b.run
	if stream {
		run = b.runStream
	}
	m, err := run(ctx, srv, begin)
	if err != nil {
		b.fail(ctx, marker, err)
		return nil, fmt.Errorf("backup %s failed: %w", b.id, err)
	}
	return m, nil
}

// fail records the failure in the marker and removes the parts.
func (b *backup) fail(ctx context.Context, marker catalog.Started, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	marker.Status, marker.EndTime, marker.Error = catalog.StatusFailed, b.o.Now().UTC(), cause.Error()
	if err := catalog.WriteStarted(ctx, b.o.Store, marker); err != nil {
		b.o.Log.Warn("could not record the failure in the catalog", "backup", b.id, "error", err)
	}
	err := b.o.Store.List(ctx, catalog.PartsPrefix(b.o.Server, b.id), func(oi cloud.ObjectInfo) error {
		return b.o.Store.Delete(ctx, oi.Key)
	})
	if err != nil {
		b.o.Log.Warn("could not remove the parts of the failed backup; retention will", "backup", b.id, "error", err)
	}
}

func (b *backup) run(ctx context.Context, srv *Server, begin time.Time) (*catalog.Manifest, error) {
	o := b.o
	label := "cellar backup " + b.id
	o.Progress.Stage("checkpoint")
	o.Log.Info("starting the backup", "server", o.Server, "backup", b.id, "fast_checkpoint", o.Fast)
	st, err := startBackup(ctx, o.Conn, srv.Version, label, o.Fast)
	if err != nil {
		return nil, err
	}
	stopNeeded := true
	defer func() {
		if stopNeeded {
			// Leave PostgreSQL's backup state clean; closing the
			// connection would too.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			_, _ = stopBackup(sctx, o.Conn, srv.Version)
			cancel()
		}
	}()
	// A first walk sizes the backup for the progress display: a second
	// lstat of each file costs far less than reading it.
	var total int64
	if err := walk(o.PGData, srv.Tablespaces, func(e entry) error { total += e.Size; return nil }); err != nil {
		return nil, err
	}
	o.Progress.Stage("copying")
	o.Progress.Start(total)
	walkAll := func(emit func(entry) error) error { return walk(o.PGData, srv.Tablespaces, emit) }
	if b.parent != nil {
		o.Log.Info("incremental backup", "server", o.Server, "backup", b.id, "type", b.typ, "parent", b.parent.ID, "chain_length", b.parent.Chain()+1)
		walkAll = mergeParent(ctx, b.parent, b.parentContents, walkAll)
	}
	parts, err := b.writeParts(ctx, walkAll)
	if err != nil {
		return nil, err
	}
	o.Progress.Stage("stopping")
	stopNeeded = false
	sp, err := stopBackup(ctx, o.Conn, srv.Version)
	if err != nil {
		return nil, err
	}
	meta, err := b.writeMeta(ctx, []smallFile{{name: "backup_label", data: []byte(sp.Label)}, {name: "tablespace_map", data: []byte(sp.TablespaceMap)}})
	if err != nil {
		return nil, err
	}
	o.Progress.Done()
	return b.record(ctx, srv, taken{
		method: "local", label: label, begin: begin, parts: append(parts, meta),
		startLSN: st.LSN, endLSN: sp.LSN, backupLabel: sp.Label, tablespaceMap: sp.TablespaceMap,
	})
}

// taken is what a backup method took, for its manifest.
type taken struct {
	method, label    string
	begin            time.Time
	parts            []catalog.Part
	startLSN, endLSN pg.LSN
	// endTimeline is the timeline the backup ended on, when PostgreSQL
	// says (0: the one its backup_label starts on).
	endTimeline   uint32
	backupLabel   string
	tablespaceMap string
}

// record waits for the backup's WAL in the repository and writes its
// manifest, which makes the backup part of the catalog.
func (b *backup) record(ctx context.Context, srv *Server, t taken) (*catalog.Manifest, error) {
	o := b.o
	startWAL, timeline, err := labelInfo(t.backupLabel)
	if err != nil {
		return nil, err
	}
	endTL := t.endTimeline
	if endTL == 0 {
		endTL = timeline
	}
	endWAL := t.endLSN.PrevSegmentName(endTL, srv.WALSegmentSize)
	if endWAL < startWAL {
		endWAL = startWAL
	}
	if err := b.waitWAL(ctx, srv, timeline, startWAL, endWAL); err != nil {
		return nil, err
	}
	m := &catalog.Manifest{
		Version: catalog.ManifestVersionFull, ID: b.id, Server: o.Server, Status: catalog.StatusDone,
		SystemIdentifier: srv.SystemIdentifier, PGVersion: srv.Version, PGVersionString: srv.VersionString,
		PGData: o.PGData, Standby: srv.Standby, Timeline: timeline, WALSegmentSize: srv.WALSegmentSize,
		BeginLSN: t.startLSN.String(), EndLSN: t.endLSN.String(), BeginWAL: startWAL, EndWAL: endWAL,
		BeginTime: t.begin, EndTime: o.Now().UTC(), Label: t.label, Method: t.method, Fast: o.Fast,
		Compression: string(o.Codec), CompressionLevel: o.Level, CellarVersion: o.CellarVersion,
		BackupLabel: t.backupLabel, TablespaceMap: t.tablespaceMap, Tablespaces: srv.Tablespaces,
	}
	m.Host, _ = os.Hostname()
	m.Type, m.ChainLength = catalog.TypeFull, 1
	if b.parent != nil {
		m.Version, m.Type, m.Parent, m.ChainLength = catalog.ManifestVersionIncremental, b.typ, b.parent.ID, b.parent.Chain()+1
	}
	if m.Tablespaces == nil {
		m.Tablespaces = []catalog.Tablespace{}
	}
	parts := t.parts
	sort.Slice(parts, func(i, j int) bool { return parts[i].Number < parts[j].Number })
	for i, p := range parts {
		if p.Number != i+1 {
			return nil, fmt.Errorf("internal error: part %d is missing", i+1)
		}
		m.StoredSize += p.Size
	}
	m.DataSize, m.FileCount, m.PartCount = b.dataSize, b.fileCount, len(parts)
	for i := range m.Tablespaces {
		m.Tablespaces[i].Size = b.spcSize[strconv.FormatUint(uint64(m.Tablespaces[i].OID), 10)]
	}
	if err := b.parentStillThere(ctx); err != nil {
		return nil, err
	}
	index, err := catalog.WriteIndex(ctx, o.Store, o.Server, b.id, parts)
	if err != nil {
		return nil, fmt.Errorf("writing the index of parts: %w", err)
	}
	m.Index = &index
	if err := catalog.WriteManifest(ctx, o.Store, m); err != nil {
		return nil, fmt.Errorf("writing the manifest: %w", err)
	}
	if err := o.Store.Delete(ctx, catalog.StartedKey(o.Server, b.id)); err != nil {
		o.Log.Warn("could not remove the backup's start marker", "backup", b.id, "error", err)
	}
	o.Log.Info("backup done", "server", o.Server, "backup", b.id, "method", t.method, "type", m.Type, "size", m.DataSize, "stored", m.StoredSize, "files", m.FileCount, "parts", m.PartCount)
	return m, nil
}

// smallFile is a file of the last part: held in memory, or spooled to a
// temporary file.
type smallFile struct {
	name  string
	data  []byte
	spool *os.File
}

// writeMeta writes the last part: the backup_label and tablespace_map
// that PostgreSQL returned (and the other small files given), so that the
// parts extracted with tar make a data directory ready for recovery.
// Empty files given are left out.
func (b *backup) writeMeta(ctx context.Context, small []smallFile) (catalog.Part, error) {
	p, err := b.openPart(ctx, b.nextPart())
	if err != nil {
		return catalog.Part{}, err
	}
	now := b.o.Now().UTC()
	buf := make([]byte, 256<<10)
	for _, f := range small {
		var r io.Reader = bytes.NewReader(f.data)
		size := int64(len(f.data))
		if f.spool != nil {
			if size, err = f.spool.Seek(0, io.SeekEnd); err == nil {
				_, err = f.spool.Seek(0, io.SeekStart)
			}
			r = f.spool
		}
		if err == nil && size == 0 {
			continue
		}
		if err == nil {
			err = p.addReader(catalog.File{Path: f.name, Size: size, Mode: 0o600, MTime: now}, r, buf, func(int64) {}, false)
		}
		if err != nil {
			p.abort(err)
			return catalog.Part{}, err
		}
	}
	return p.finish(ctx)
}

// waitWAL waits until the WAL from the start to the stop segment is in the
// repository.
func (b *backup) waitWAL(ctx context.Context, srv *Server, timeline uint32, startWAL, endWAL string) error {
	o := b.o
	o.Log.Info("waiting for the backup's WAL in the repository", "from", startWAL, "to", endWAL)
	if srv.Standby && o.SwitchPrimaryWAL != nil {
		if err := o.SwitchPrimaryWAL(ctx); err != nil {
			return fmt.Errorf("switching WAL on the primary (primary_conninfo): %w", err)
		}
	}
	first, err := pg.ParseWALName(startWAL)
	if err != nil {
		return err
	}
	last, err := pg.ParseWALName(endWAL)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, o.WALTimeout)
	defer cancel()
	seg := first.SegNo(srv.WALSegmentSize)
	end := last.SegNo(srv.WALSegmentSize)
	for seg <= end {
		name := pg.SegmentNameOf(timeline, seg, srv.WALSegmentSize)
		w, _ := pg.ParseWALName(name)
		_, err := o.Store.Stat(wctx, catalog.WALKey(o.Server, w))
		if err == nil {
			seg++
			continue
		}
		if !errors.Is(err, cloud.ErrNotExist) && wctx.Err() == nil {
			return err
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			hint := "check archive_command and `cellar check " + o.Server + "`"
			if srv.Standby && o.SwitchPrimaryWAL == nil {
				hint = "a backup from a standby needs the primary to close the segment: set primary_conninfo so Cellar can, or run pg_switch_wal() on the primary"
			}
			return fmt.Errorf("the WAL segment %s, which the backup needs, %w within %v (backup_wal_timeout): %s", name, ErrWALNotArchived, o.WALTimeout, hint)
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}
