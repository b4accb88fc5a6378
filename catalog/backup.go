package catalog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
)

// A base backup is stored as
//
//	<server>/base/<id>/part-00001.tar.zst   parts: tar streams, compressed
//	<server>/backups/<id>.started           written when the backup starts
//	<server>/backups/<id>.manifest          written last, when it is done
//
// The catalog lists <server>/backups/ only, so listing costs a call per
// thousand backups whatever the number of parts.

// Backup statuses.
const (
	StatusStarted = "STARTED" // running, or killed without a trace
	StatusDone    = "DONE"
	StatusFailed  = "FAILED"
)

// BackupIDLayout is the time layout of a backup id: its start time in UTC.
const BackupIDLayout = "20060102T150405"

var backupIDRe = regexp.MustCompile(`^\d{8}T\d{6}$`)

// NewBackupID returns the id of a backup started at t.
func NewBackupID(t time.Time) string { return t.UTC().Format(BackupIDLayout) }

// ValidBackupID reports whether id has the form of a backup id.
func ValidBackupID(id string) bool { return backupIDRe.MatchString(id) }

// BackupsPrefix is the prefix of the catalog objects of a server's backups.
func BackupsPrefix(server string) string { return server + "/backups/" }

// ManifestKey is the key of a backup's manifest.
func ManifestKey(server, id string) string { return BackupsPrefix(server) + id + ".manifest" }

// KeepKey is the key of the marker that pins a backup (cellar keep).
func KeepKey(server, id string) string { return BackupsPrefix(server) + id + ".keep" }

// StartedKey is the key of the marker of a backup that started.
func StartedKey(server, id string) string { return BackupsPrefix(server) + id + ".started" }

// BasePrefix is the prefix of every backup's parts.
func BasePrefix(server string) string { return server + "/base/" }

// PartsPrefix is the prefix of a backup's parts.
func PartsPrefix(server, id string) string { return BasePrefix(server) + id + "/" }

// PartKey is the key of part n of a backup compressed with c.
func PartKey(server, id string, n int, c codec.Codec) string {
	k := fmt.Sprintf("%spart-%05d.tar", PartsPrefix(server, id), n)
	if ext := c.Extension(); ext != "" {
		k += "." + ext
	}
	return k
}

// ManifestVersion is the newest manifest schema this Cellar reads; it
// reads every version up to this one. Version 1 held every part and file
// in the manifest; version 2 holds a summary and names the index of parts
// (contents.go); version 3 is an incremental backup, whose files may be
// changed pages or references to the backups it builds on (a reader of
// version 2 must refuse it). A full backup is written as version 2.
const ManifestVersion = 3

// Manifest versions written.
const (
	ManifestVersionFull        = 2
	ManifestVersionIncremental = 3
)

// Backup types.
const (
	TypeFull = "full"
	TypeIncr = "incr" // on the newest backup
	TypeDiff = "diff" // on the newest full backup
)

// Manifest describes one finished base backup. It is written after every
// part it names is durable and after the WAL from BeginWAL to EndWAL is in
// the repository; a backup without a manifest is not a backup.
type Manifest struct {
	Version          int       `json:"manifest_version"`
	ID               string    `json:"id"`
	Server           string    `json:"server"`
	Status           string    `json:"status"`
	SystemIdentifier uint64    `json:"system_identifier,string"`
	PGVersion        int       `json:"pg_version"`
	PGVersionString  string    `json:"pg_version_string"`
	PGData           string    `json:"pgdata"`
	Standby          bool      `json:"standby"`
	Timeline         uint32    `json:"timeline"`
	WALSegmentSize   int64     `json:"wal_segment_size"`
	BeginLSN         string    `json:"begin_lsn"`
	EndLSN           string    `json:"end_lsn"`
	BeginWAL         string    `json:"begin_wal"`
	EndWAL           string    `json:"end_wal"`
	BeginTime        time.Time `json:"begin_time"`
	EndTime          time.Time `json:"end_time"`
	Label            string    `json:"label"`
	// Method is how the backup was taken: "local" (Cellar read pgdata)
	// or "stream" (BASE_BACKUP over the replication protocol). Empty in
	// manifests of before the stream method means local.
	Method           string `json:"backup_method,omitempty"`
	Fast             bool   `json:"fast_checkpoint"`
	Compression      string `json:"compression"`
	CompressionLevel int    `json:"compression_level"`
	// DataSize is the size of the files backed up; StoredSize what the
	// repository holds for them (all parts).
	DataSize      int64  `json:"data_size"`
	StoredSize    int64  `json:"stored_size"`
	FileCount     int    `json:"file_count"`
	CellarVersion string `json:"cellar_version"`
	Host          string `json:"host"`

	Tablespaces   []Tablespace `json:"tablespaces"`
	BackupLabel   string       `json:"backup_label"`
	TablespaceMap string       `json:"tablespace_map,omitempty"`
	// PartCount is the number of parts; Index names the object that lists
	// them (nil in a version 1 manifest, which lists them itself: read
	// them with OpenContents).
	PartCount int        `json:"part_count"`
	Index     *ObjectRef `json:"index,omitempty"`

	// Type is TypeFull (or empty, in manifests of before incrementals),
	// TypeIncr or TypeDiff. An incremental names its Parent, whose files it
	// builds on, and its ChainLength: the number of backups a restore
	// reads, itself included (1 for a full). DataSize is then the size of
	// the whole data directory and StoredSize what this backup added.
	Type        string `json:"type,omitempty"`
	Parent      string `json:"parent,omitempty"`
	ChainLength int    `json:"chain_length,omitempty"`

	// Encryption is "age" for a backup stored sealed (empty: in the
	// clear). Sealed is set on a manifest read without the private key:
	// only the fields of catalogView are known.
	Encryption string `json:"encryption,omitempty"`
	Sealed     bool   `json:"-"`
}

// catalogView is what a sealed manifest keeps readable, for the catalog
// (list-backups, retention, check, cron) on a host without the private
// key: the backup's place in time, WAL and chain, and what the repository
// holds for it; not the data's size or file count, paths, label or host.
func (m *Manifest) catalogView() *Manifest {
	return &Manifest{
		Version: m.Version, ID: m.ID, Server: m.Server, Status: m.Status, SystemIdentifier: m.SystemIdentifier,
		PGVersion: m.PGVersion, Timeline: m.Timeline, WALSegmentSize: m.WALSegmentSize,
		BeginLSN: m.BeginLSN, EndLSN: m.EndLSN, BeginWAL: m.BeginWAL, EndWAL: m.EndWAL,
		BeginTime: m.BeginTime, EndTime: m.EndTime, Method: m.Method, Compression: m.Compression,
		StoredSize: m.StoredSize, PartCount: m.PartCount, CellarVersion: m.CellarVersion,
		Type: m.Type, Parent: m.Parent, ChainLength: m.ChainLength, Encryption: m.Encryption,
	}
}

// BackupType is the backup's type: TypeFull for manifests without one.
func (m *Manifest) BackupType() string {
	if m.Type == "" {
		return TypeFull
	}
	return m.Type
}

// Chain is the number of backups a restore of this one reads.
func (m *Manifest) Chain() int { return max(1, m.ChainLength) }

// Tablespace is a tablespace other than pg_default and pg_global. Its
// files are recorded under pg_tblspc/<oid>/.
type Tablespace struct {
	OID      uint32 `json:"oid"`
	Name     string `json:"name"`
	Location string `json:"location"`
	Size     int64  `json:"size"`
}

// Part is one stored tar stream.
type Part struct {
	Number int    `json:"number"`
	Key    string `json:"key"`
	// Size and SHA256 describe the stored (compressed) object; DataSize
	// is the length of the tar stream inside it.
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
	DataSize int64  `json:"data_size"`
	Files    int    `json:"files"`
	// List names the part's file list (version 2).
	List *ObjectRef `json:"file_list,omitempty"`
	// Blocks names the part's block map: the page hashes of its relation
	// files, in list order (blockmap.go). Absent in backups of before
	// incrementals, which cannot be a parent.
	Blocks *ObjectRef `json:"block_map,omitempty"`
}

// File types in a manifest.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
)

// File is one entry of the data directory (or of a tablespace, under
// pg_tblspc/<oid>/) as stored in a part.
type File struct {
	Path  string    `json:"path"`
	Type  string    `json:"type"`
	Size  int64     `json:"size"`
	Mode  uint32    `json:"mode"`
	MTime time.Time `json:"mtime"`
	// SHA256 is the checksum of the bytes stored for a regular file.
	SHA256 string `json:"sha256,omitempty"`
	// Link is a symlink's target.
	Link string `json:"link,omitempty"`
	// Part is the number of the part that holds the entry (implied by the
	// list a version 2 entry is in), Offset where the file's data starts
	// in that part's tar stream.
	Part   int   `json:"part,omitempty"`
	Offset int64 `json:"offset"`
	// Pages is the number of page hashes this entry has in the part's
	// block map: a relation file's size in pages (0: none).
	Pages int64 `json:"pages,omitempty"`
	// Stored says what the part holds of a regular file: StoredWhole (the
	// file, as in a full backup), StoredPages (the pages that changed
	// since the parent, in an entry named Path+DeltaSuffix) or StoredRef
	// (nothing: it is unchanged). Size and SHA256 are always the whole
	// file's as read for this backup. Base is, for pages and references,
	// the backup that holds the whole file the chain builds on.
	Stored string `json:"stored,omitempty"`
	Base   string `json:"base,omitempty"`
}

// What an incremental's entry holds of a regular file.
const (
	StoredWhole = ""
	StoredPages = "pages"
	StoredRef   = "ref"
)

// DeltaSuffix ends the tar name of an entry of changed pages, so that
// extracting a part with tar never writes one where a data file goes.
const DeltaSuffix = ".cellar-pages"

// TarName is the name of f's entry in its part's tar stream.
func (f *File) TarName() string {
	switch {
	case f.Stored == StoredPages:
		return f.Path + DeltaSuffix
	case f.Type == TypeDir:
		return f.Path + "/"
	}
	return f.Path
}

// Ratio is the compression ratio of the backup.
func (m *Manifest) Ratio() float64 {
	if m.StoredSize == 0 {
		return 0
	}
	return float64(m.DataSize) / float64(m.StoredSize)
}

// maxManifest bounds what a reader accepts as a manifest, uncompressed.
const maxManifest = 4 << 30

// WriteManifest stores m, compressed, with a conditional create: a
// manifest is never replaced.
func WriteManifest(ctx context.Context, store cloud.Storage, m *Manifest) error {
	if Sealing(store) {
		m.Encryption = EncryptionAge
	}
	js, err := json.Marshal(m)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(js)
	h := Header{Type: "manifest", Name: m.ID, Codec: codec.Zstd, Size: int64(len(js)), SHA256: hex.EncodeToString(sum[:])}
	if Sealing(store) {
		if h.Clear, err = json.Marshal(m.catalogView()); err != nil {
			return err
		}
	}
	var buf bytes.Buffer
	if err := Encode(&buf, h, 0, bytes.NewReader(js)); err != nil {
		return err
	}
	return cloud.Create(ctx, store, ManifestKey(m.Server, m.ID), &buf, int64(buf.Len()))
}

// ReadManifest reads and checks a backup's manifest: the summary, whatever
// its version (OpenContents reads the parts and files). A missing
// manifest gives an error that wraps cloud.ErrNotExist.
func ReadManifest(ctx context.Context, store cloud.Storage, server, id string) (*Manifest, error) {
	m, err := readSummary(ctx, store, ManifestKey(server, id))
	if err != nil {
		return nil, err
	}
	if m.ID != id || m.Server != server {
		return nil, fmt.Errorf("%s: %w: the manifest is of backup %s of server %s", ManifestKey(server, id), ErrCorrupt, m.ID, m.Server)
	}
	return m, nil
}

// readSummary reads the manifest under key as ReadManifest returns it. Of
// a sealed manifest that this host cannot open, it returns what stays
// readable (catalogView), marked Sealed.
func readSummary(ctx context.Context, store cloud.Storage, key string) (*Manifest, error) {
	var o manifestObject
	err := readManifestInto(ctx, store, key, &o)
	sealed := false
	if errors.Is(err, ErrNoIdentity) {
		var js []byte
		if js, err = readClear(ctx, store, key, "manifest", err); err == nil {
			o, sealed = manifestObject{}, true
			if uerr := json.Unmarshal(js, &o); uerr != nil {
				err = fmt.Errorf("%s: %w: %v", key, ErrCorrupt, uerr)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	m := o.summary()
	m.Sealed = sealed
	return m, nil
}

// manifestObject is a manifest as stored. Of the parts and files that a
// version 1 manifest also holds, only the parts are counted here.
type manifestObject struct {
	Manifest
	V1Parts []struct{} `json:"parts"`
	V1Files skipJSON   `json:"files"`
}

func (o *manifestObject) summary() *Manifest {
	m := o.Manifest
	if m.Version == 1 {
		m.PartCount = len(o.V1Parts)
	}
	return &m
}

// skipJSON decodes any JSON value into nothing.
type skipJSON struct{}

func (*skipJSON) UnmarshalJSON([]byte) error { return nil }

func readManifestInto(ctx context.Context, store cloud.Storage, key string, v any) error {
	js, err := readSmall(ctx, store, key, "manifest", maxManifest)
	if err != nil {
		return err
	}
	var ver struct {
		Version int `json:"manifest_version"`
	}
	if err := json.Unmarshal(js, &ver); err != nil {
		return fmt.Errorf("%s: %w: %v", key, ErrCorrupt, err)
	}
	if ver.Version < 1 || ver.Version > ManifestVersion {
		return fmt.Errorf("%s: manifest version %d is newer than this Cellar reads (%d): upgrade cellar", key, ver.Version, ManifestVersion)
	}
	if err := json.Unmarshal(js, v); err != nil {
		return fmt.Errorf("%s: %w: %v", key, ErrCorrupt, err)
	}
	return nil
}

// Started is the marker a backup writes when it starts, and rewrites with
// status FAILED and the error when it fails.
type Started struct {
	ID        string    `json:"id"`
	Server    string    `json:"server"`
	Status    string    `json:"status"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	BeginTime time.Time `json:"begin_time"`
	EndTime   time.Time `json:"end_time,omitzero"`
	Error     string    `json:"error,omitempty"`
}

// Keep records that a backup is pinned.
type Keep struct {
	ID     string    `json:"id"`
	Target string    `json:"target"` // "standalone": the backup and the WAL to make it consistent
	Since  time.Time `json:"since"`
}

// WriteKeep pins a backup; DeleteKeep releases it.
func WriteKeep(ctx context.Context, store cloud.Storage, server string, k Keep) error {
	return PutJSON(ctx, store, KeepKey(server, k.ID), "backup-keep", k, false)
}

// DeleteKeep releases a pinned backup.
func DeleteKeep(ctx context.Context, store cloud.Storage, server, id string) error {
	return store.Delete(ctx, KeepKey(server, id))
}

// WriteStarted stores (or replaces) the marker of a backup.
func WriteStarted(ctx context.Context, store cloud.Storage, s Started) error {
	return PutJSON(ctx, store, StartedKey(s.Server, s.ID), "backup-started", s, false)
}

// BackupInfo is one backup as the catalog lists it: the summary of its
// manifest, or the marker of a backup that has none.
type BackupInfo struct {
	// Manifest is the backup's manifest (the summary), or nil for a
	// backup that did not finish.
	Manifest *Manifest
	Started  *Started
	// Keep is set for a backup pinned with cellar keep.
	Keep bool
}

// ID is the backup's id.
func (b BackupInfo) ID() string {
	if b.Manifest != nil {
		return b.Manifest.ID
	}
	return b.Started.ID
}

// Status is DONE for a backup with a manifest, otherwise the marker's.
func (b BackupInfo) Status() string {
	if b.Manifest != nil {
		return b.Manifest.Status
	}
	return b.Started.Status
}

// ListBackups lists a server's backups, oldest first, from one paged
// listing of the catalog prefix and a read of each backup's manifest (or
// marker), several at once.
func ListBackups(ctx context.Context, store cloud.Storage, server string) ([]BackupInfo, error) {
	type entry struct{ manifest, started, keep bool }
	ids := map[string]*entry{}
	prefix := BackupsPrefix(server)
	err := store.List(ctx, prefix, func(o cloud.ObjectInfo) error {
		id, ext, ok := strings.Cut(strings.TrimPrefix(o.Key, prefix), ".")
		if !ok || !ValidBackupID(id) {
			return nil
		}
		e := ids[id]
		if e == nil {
			e = &entry{}
			ids[id] = e
		}
		switch ext {
		case "manifest":
			e.manifest = true
		case "started":
			e.started = true
		case "keep":
			e.keep = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var order []string
	for id, e := range ids {
		if e.manifest || e.started {
			order = append(order, id)
		}
	}
	sort.Strings(order)
	out := make([]BackupInfo, len(order))
	errs := make([]error, len(order))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, id := range order {
		out[i].Keep = ids[id].keep
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if ids[id].manifest {
				out[i].Manifest, errs[i] = readSummary(ctx, store, ManifestKey(server, id))
				return
			}
			var s Started
			errs[i] = GetJSON(ctx, store, StartedKey(server, id), "backup-started", &s)
			if errors.Is(errs[i], cloud.ErrNotExist) {
				// Finished (or deleted) between the listing and now.
				errs[i] = nil
				s = Started{ID: id, Server: server, Status: StatusFailed, Error: "the backup's marker vanished"}
			}
			out[i].Started = &s
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
