package health

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// Status is one server's state as `cellar status` shows it (Barman's
// status): PostgreSQL and its archiver, streaming, the catalog, the range
// a restore can reach, the last drill and what the repository holds. Its
// JSON field names are status's and diagnose's contract.
type Status struct {
	Server      string `json:"server"`
	Description string `json:"description"`
	Active      bool   `json:"active"`
	// PostgreSQL is nil when the server has no connection to read it
	// with; Streaming is nil when streaming is not configured.
	PostgreSQL  *PostgresStatus  `json:"postgresql"`
	Streaming   *StreamingStatus `json:"streaming"`
	Backups     BackupsStatus    `json:"backups"`
	WAL         WALStatus        `json:"wal"`
	Recoverable Recoverable      `json:"recoverable"`
	Drills      DrillsStatus     `json:"drills"`
	Repository  RepositoryStatus `json:"repository"`
	// RecentFailures are the newest failed backups and drills and the
	// archiver's last failure, newest first (see RecentFailures).
	RecentFailures []Failure `json:"-"`
}

// PostgresStatus is what PostgreSQL says of itself.
type PostgresStatus struct {
	// State is "in production", "in recovery" or "unreachable" (Error
	// says why).
	State          string          `json:"state"`
	Error          string          `json:"error,omitempty"`
	Version        string          `json:"version,omitempty"` // server_version
	VersionNum     int             `json:"version_num,omitempty"`
	DataDirectory  string          `json:"data_directory,omitempty"`
	CurrentLSN     string          `json:"current_lsn,omitempty"`
	CurrentWAL     string          `json:"current_wal,omitempty"` // on a primary only
	ArchiveMode    string          `json:"archive_mode,omitempty"`
	ArchiveCommand string          `json:"archive_command,omitempty"`
	Archiver       *ArchiverStatus `json:"archiver,omitempty"`
}

// States of PostgresStatus.
const (
	StateProduction  = "in production"
	StateRecovery    = "in recovery"
	StateUnreachable = "unreachable"
)

// ArchiverStatus is pg_stat_archiver, with the rate of archiving since its
// statistics were reset.
type ArchiverStatus struct {
	ArchivedCount    int64     `json:"archived_count"`
	LastArchivedWAL  string    `json:"last_archived_wal,omitempty"`
	LastArchivedTime time.Time `json:"last_archived_time,omitzero"`
	FailedCount      int64     `json:"failed_count"`
	LastFailedWAL    string    `json:"last_failed_wal,omitempty"`
	LastFailedTime   time.Time `json:"last_failed_time,omitzero"`
	// Failing is set when the last failure came after the last success.
	Failing    bool      `json:"failing"`
	StatsReset time.Time `json:"stats_reset,omitzero"`
	// RatePerHour is archived_count per hour since StatsReset (0 when
	// PostgreSQL does not say when that was).
	RatePerHour float64 `json:"rate_per_hour"`
}

// StreamingStatus is WAL streaming: whether receive-wal runs on this host,
// and the slot as PostgreSQL shows it.
type StreamingStatus struct {
	StreamingArchiver bool          `json:"streaming_archiver"`
	ReceiveWALRunning bool          `json:"receive_wal_running"`
	Slot              *pg.SlotState `json:"slot,omitempty"`
	SlotError         string        `json:"slot_error,omitempty"`
}

// BackupsStatus counts the catalog's backups and names the first and the
// last finished one.
type BackupsStatus struct {
	Total   int `json:"total"`
	Done    int `json:"done"`
	Failed  int `json:"failed"`
	Running int `json:"running"`
	// StoredBytes is what the repository holds for the finished backups.
	StoredBytes int64        `json:"stored_bytes"`
	First       *BackupPoint `json:"first"`
	Last        *BackupPoint `json:"last"`
}

// BackupPoint is one finished backup, in short.
type BackupPoint struct {
	ID         string    `json:"id"`
	Type       string    `json:"type"`
	EndTime    time.Time `json:"end_time"`
	EndLSN     string    `json:"end_lsn"`
	AgeSeconds float64   `json:"age_seconds"`
}

// WALStatus is the archived WAL in the repository.
type WALStatus struct {
	Files       int    `json:"files"`
	StoredBytes int64  `json:"stored_bytes"`
	LastSegment string `json:"last_segment,omitempty"`
	// LastTime is when the newest file was stored.
	LastTime time.Time `json:"last_time,omitzero"`
}

// Recoverable is the range a restore can reach: from the end of the
// oldest finished backup to the end of the WAL archived after the newest.
type Recoverable struct {
	First *Point `json:"first"`
	Last  *Point `json:"last"`
}

// Point is a point recovery can reach.
type Point struct {
	Time   time.Time `json:"time"`
	LSN    string    `json:"lsn"`
	Backup string    `json:"backup,omitempty"` // the backup it starts from
	WAL    string    `json:"wal,omitempty"`    // the last segment it needs
}

// DrillsStatus is the server's restore drills: how many there are, the
// last that finished and the last that succeeded. The records carry no
// answer of the drill's query (it may hold the database's data).
type DrillsStatus struct {
	Count   int            `json:"count"`
	Running int            `json:"running"`
	Last    *catalog.Drill `json:"last"`
	LastOK  *catalog.Drill `json:"last_ok"`
	Error   string         `json:"error,omitempty"`
}

// RepositoryStatus is the repository: the caller fills in its address and
// encryption; Error says why it could not be read.
type RepositoryStatus struct {
	URL        string `json:"url"`
	Encryption string `json:"encryption"`
	Readable   bool   `json:"readable"`
	Error      string `json:"error,omitempty"`
	// StoredBytes is what the repository holds for the finished backups
	// and the archived WAL.
	StoredBytes int64 `json:"stored_bytes"`
}

// Failure is one recent failure: a backup, a drill or the archiver.
type Failure struct {
	Kind  string    `json:"kind"` // backup, drill or archiver
	ID    string    `json:"id,omitempty"`
	Time  time.Time `json:"time,omitzero"`
	Error string    `json:"error"`
}

// recentFailures is how many failures RecentFailures keeps.
const recentFailures = 10

// drillsRead is how many of the newest drill records a status reads.
const drillsRead = 50

// ReadStatus reads a server's status: PostgreSQL over o.Connect (when
// o.SQL; an unreachable server is part of the status, not an error),
// streaming (see streamingStatus; the slot over the same connection), and
// the catalog, the WAL listing and the drills from the repository. The
// error says that the repository could not be read; the status then holds
// what could be.
func ReadStatus(ctx context.Context, o Options) (Status, error) {
	s := Status{Server: o.Server, Repository: RepositoryStatus{Encryption: o.Encryption}}
	if s.Repository.Encryption == "" {
		s.Repository.Encryption = catalog.EncryptionNone
	}
	switch {
	case o.SQL:
		s.PostgreSQL, s.Streaming = readPostgres(ctx, o)
	case o.Streaming:
		if s.Streaming = streamingStatus(o); s.Streaming != nil {
			s.Streaming.SlotError = "no connection to read the slot with: set conninfo"
		}
	}
	err := readRepository(ctx, o, &s)
	if err != nil {
		s.Repository.Error = err.Error()
		s.RecentFailures = RecentFailures(s, nil, nil)
	}
	return s, err
}

// streamingStatus is the streaming part of the status without the slot:
// nil unless streaming_archiver = on or a receive-wal runs (a
// streaming_conninfo for stream backups alone streams no WAL).
func streamingStatus(o Options) *StreamingStatus {
	running := o.ReceiveWALRunning != nil && o.ReceiveWALRunning()
	if !o.Streaming || !o.StreamingArchiver && !running {
		return nil
	}
	return &StreamingStatus{StreamingArchiver: o.StreamingArchiver, ReceiveWALRunning: running}
}

// readPostgres reads PostgreSQL's state and, with o.Streaming, the slot.
func readPostgres(ctx context.Context, o Options) (*PostgresStatus, *StreamingStatus) {
	ss := streamingStatus(o)
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := o.Connect(cctx)
	if err != nil {
		if ss != nil {
			ss.SlotError = "PostgreSQL is unreachable"
		}
		return &PostgresStatus{State: StateUnreachable, Error: err.Error()}, ss
	}
	defer conn.Close(context.WithoutCancel(ctx))
	p, err := ReadPostgres(cctx, conn)
	if err != nil {
		p.Error = err.Error()
	}
	if ss != nil {
		slot, err := pg.ReadSlotState(cctx, conn, o.SlotName, p.CurrentLSN)
		if err != nil {
			ss.SlotError = err.Error()
		} else {
			ss.Slot = &slot
		}
	}
	return p, ss
}

// ReadPostgres reads the server's version, state, data directory, where
// its WAL is, its archiving settings and pg_stat_archiver. A setting this
// user may not read (data_directory without pg_read_all_settings) is left
// empty.
func ReadPostgres(ctx context.Context, conn *pgx.Conn) (*PostgresStatus, error) {
	p := &PostgresStatus{State: StateProduction}
	show := func(name string) string {
		v, _ := pg.Setting(ctx, conn, name)
		return v
	}
	inRecovery, err := pg.InRecovery(ctx, conn)
	if err != nil {
		return p, err
	}
	if p.CurrentLSN, err = pg.CurrentLSN(ctx, conn); err != nil {
		return p, err
	}
	if inRecovery {
		p.State = StateRecovery
	} else if p.CurrentWAL, err = pg.CurrentWAL(ctx, conn, p.CurrentLSN); err != nil {
		return p, err
	}
	p.Version = show("server_version")
	p.VersionNum, _ = strconv.Atoi(show("server_version_num"))
	p.DataDirectory = show("data_directory")
	p.ArchiveMode = show("archive_mode")
	p.ArchiveCommand = show("archive_command")
	a, err := pg.ReadArchiver(ctx, conn)
	if err != nil {
		return p, err
	}
	p.Archiver = &ArchiverStatus{
		ArchivedCount: a.Archived, LastArchivedWAL: a.LastArchivedWAL, LastArchivedTime: a.LastArchivedTime,
		FailedCount: a.Failed, LastFailedWAL: a.LastFailedWAL, LastFailedTime: a.LastFailedTime, Failing: a.Failing,
		StatsReset: a.StatsReset,
	}
	if h := time.Since(a.StatsReset).Hours(); !a.StatsReset.IsZero() && h > 0 {
		p.Archiver.RatePerHour = float64(a.Archived) / h
	}
	return p, nil
}

// readRepository fills in the catalog's part of the status.
func readRepository(ctx context.Context, o Options, s *Status) error {
	cctx, cancel := context.WithTimeout(ctx, catalogTimeout)
	defer cancel()
	store, err := o.OpenStore(cctx)
	if err != nil {
		return err
	}
	defer store.Close()
	// One listing says soon whether the repository answers at all.
	rctx, rcancel := context.WithTimeout(cctx, reachTimeout)
	err = store.List(rctx, catalog.BackupsPrefix(o.Server), func(cloud.ObjectInfo) error { return errStop })
	rcancel()
	if err != nil && !errors.Is(err, errStop) {
		return cloud.NoAnswer(rctx, err, reachTimeout, o.Where, "")
	}
	cat, err := o.ReadCatalog(cctx, store)
	if err != nil {
		return cloud.NoAnswer(cctx, err, catalogTimeout, o.Where, "")
	}
	s.Repository.Readable = true
	now := o.now()
	CatalogStatus(s, cat, now)
	drills, count, err := readDrills(cctx, store, o.Server)
	if err != nil {
		// The drills are a part of the status; the catalog was read.
		s.Drills.Error = err.Error()
	}
	DrillStatus(s, drills, count)
	s.RecentFailures = RecentFailures(*s, cat, drills)
	return nil
}

// readDrills reads the newest drill records and counts them all.
func readDrills(ctx context.Context, store cloud.Storage, server string) ([]catalog.Drill, int, error) {
	ids, err := catalog.DrillIDs(ctx, store, server)
	if err != nil {
		return nil, 0, err
	}
	count := len(ids)
	drills, err := catalog.ReadDrills(ctx, store, server, ids[max(0, count-drillsRead):])
	return drills, count, err
}

// CatalogStatus fills in the backups, the WAL, the recoverable range and
// the stored bytes of s from the catalog, read with its WAL listing.
func CatalogStatus(s *Status, cat *catalog.Catalog, now time.Time) {
	b := &s.Backups
	b.Total = len(cat.Backups)
	for _, e := range cat.Backups {
		switch e.Status {
		case catalog.StatusDone:
			b.Done++
			if e.Manifest != nil {
				b.StoredBytes += e.Manifest.StoredSize
			}
		case catalog.StatusFailed:
			b.Failed++
		default:
			b.Running++
		}
	}
	var lastSeg *pg.WALName
	for i, w := range cat.WAL {
		s.WAL.Files++
		s.WAL.StoredBytes += w.Size
		if w.ModTime.After(s.WAL.LastTime) {
			s.WAL.LastTime = w.ModTime
		}
		if w.Kind == pg.Segment && (lastSeg == nil || pg.CompareWAL(w.WALName, *lastSeg) > 0) {
			lastSeg = &cat.WAL[i].WALName
		}
	}
	if lastSeg != nil {
		s.WAL.LastSegment = lastSeg.Name
	}
	s.Repository.StoredBytes = b.StoredBytes + s.WAL.StoredBytes
	done := cat.Done()
	if len(done) == 0 {
		return
	}
	point := func(e catalog.Entry) *BackupPoint {
		return &BackupPoint{ID: e.ID, Type: e.Manifest.BackupType(), EndTime: e.EndTime, EndLSN: e.Manifest.EndLSN, AgeSeconds: now.Sub(e.EndTime).Seconds()}
	}
	first, last := done[0], done[len(done)-1]
	b.First, b.Last = point(first), point(last)
	s.Recoverable.First = &Point{Time: first.EndTime, LSN: first.Manifest.EndLSN, Backup: first.ID, WAL: first.Manifest.EndWAL}
	r, err := cat.Recoverable(last.Manifest)
	if err != nil {
		// Nothing archived after the newest backup: its end is as far as
		// a restore goes.
		s.Recoverable.Last = &Point{Time: last.EndTime, LSN: last.Manifest.EndLSN, Backup: last.ID, WAL: last.Manifest.EndWAL}
		return
	}
	s.Recoverable.Last = &Point{Time: r.ToTime, LSN: r.ToLSN.String(), Backup: last.ID, WAL: r.LastWAL.Name}
}

// DrillStatus fills in the drills of s from the newest records (oldest
// first) and the number of records there are.
func DrillStatus(s *Status, drills []catalog.Drill, count int) {
	s.Drills.Count = count
	for _, d := range drills {
		if d.Result == catalog.DrillRunning {
			s.Drills.Running++
		}
	}
	last, lastOK := catalog.LastDrills(drills)
	s.Drills.Last, s.Drills.LastOK = withoutAnswer(last), withoutAnswer(lastOK)
}

func withoutAnswer(d *catalog.Drill) *catalog.Drill {
	if d == nil {
		return nil
	}
	c := *d
	c.Answer = ""
	return &c
}

// RecentFailures are the newest failed backups of cat and failed drills
// (drills oldest first), and the archiver's last failure from s, newest
// first, at most ten.
func RecentFailures(s Status, cat *catalog.Catalog, drills []catalog.Drill) []Failure {
	out := []Failure{}
	if p := s.PostgreSQL; p != nil && p.Archiver != nil && p.Archiver.FailedCount > 0 {
		a := p.Archiver
		state := "archiving works again since"
		if a.Failing {
			state = "still failing; last success"
		}
		last := "never"
		if !a.LastArchivedTime.IsZero() {
			last = a.LastArchivedTime.UTC().Format(time.RFC3339)
		}
		out = append(out, Failure{Kind: "archiver", ID: a.LastFailedWAL, Time: a.LastFailedTime,
			Error: fmt.Sprintf("%d failures of archive_command since %s; %s %s", a.FailedCount, statsSince(a.StatsReset), state, last)})
	}
	if cat != nil {
		for _, e := range cat.Backups {
			if e.Status == catalog.StatusFailed {
				msg := e.Error
				if msg == "" {
					msg = "(no error recorded, or it is encrypted)"
				}
				out = append(out, Failure{Kind: "backup", ID: e.ID, Time: failedAt(e.EndTime, e.BeginTime), Error: msg})
			}
		}
	}
	for _, d := range drills {
		if d.Result == catalog.DrillFailed {
			msg := d.Error
			if msg == "" {
				msg = "(no error recorded, or it is encrypted)"
			}
			out = append(out, Failure{Kind: "drill", ID: d.ID, Time: failedAt(d.EndTime, d.BeginTime), Error: msg})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.After(out[j].Time) })
	if len(out) > recentFailures {
		out = out[:recentFailures]
	}
	return out
}

func failedAt(end, begin time.Time) time.Time {
	if end.IsZero() {
		return begin
	}
	return end
}

func statsSince(t time.Time) string {
	if t.IsZero() {
		return "the statistics were reset"
	}
	return t.UTC().Format(time.RFC3339)
}

// CatalogSummary is the catalog in a few figures, for diagnose (and for a
// line of monitoring).
type CatalogSummary struct {
	Backups     int            `json:"backups"`
	Done        int            `json:"done"`
	Failed      int            `json:"failed"`
	Running     int            `json:"running"`
	Oldest      *BackupPoint   `json:"oldest"`
	Newest      *BackupPoint   `json:"newest"`
	StoredBytes int64          `json:"stored_bytes"`
	WALFiles    int            `json:"wal_files"`
	WALBytes    int64          `json:"wal_bytes"`
	Drills      int            `json:"drills"`
	LastDrill   *catalog.Drill `json:"last_drill"`
}

// Summary is the catalog's part of the status in a few figures.
func (s Status) Summary() CatalogSummary {
	return CatalogSummary{
		Backups: s.Backups.Total, Done: s.Backups.Done, Failed: s.Backups.Failed, Running: s.Backups.Running,
		Oldest: s.Backups.First, Newest: s.Backups.Last, StoredBytes: s.Repository.StoredBytes,
		WALFiles: s.WAL.Files, WALBytes: s.WAL.StoredBytes, Drills: s.Drills.Count, LastDrill: s.Drills.Last,
	}
}
