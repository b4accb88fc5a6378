package catalog

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Summary is one backup as the catalog's listings show it: list-backups
// and show-backup print it as text or JSON (its field names are that
// JSON's contract).
type Summary struct {
	ID          string `json:"id"`
	Server      string `json:"server"`
	Status      string `json:"status"`
	Type        string `json:"type,omitempty"`
	Parent      string `json:"parent,omitempty"`
	ChainLength int    `json:"chain_length,omitempty"`
	// Encryption is "age" for a backup stored encrypted, else "none";
	// Sealed says that this host could read only its catalog fields (no
	// encryption_identity_file opens it): sizes of the data, files and
	// paths are then absent.
	Encryption       string       `json:"encryption"`
	Sealed           bool         `json:"sealed,omitempty"`
	BeginTime        time.Time    `json:"begin_time"`
	EndTime          time.Time    `json:"end_time,omitzero"`
	Duration         float64      `json:"duration_seconds,omitempty"`
	PGVersion        int          `json:"pg_version,omitempty"`
	PGVersionString  string       `json:"pg_version_string,omitempty"`
	PGData           string       `json:"pgdata,omitempty"`
	SystemIdentifier string       `json:"system_identifier,omitempty"`
	Standby          bool         `json:"standby"`
	Timeline         uint32       `json:"timeline,omitempty"`
	BeginWAL         string       `json:"begin_wal,omitempty"`
	EndWAL           string       `json:"end_wal,omitempty"`
	BeginLSN         string       `json:"begin_lsn,omitempty"`
	EndLSN           string       `json:"end_lsn,omitempty"`
	DataSize         int64        `json:"data_size"`
	StoredSize       int64        `json:"stored_size"`
	Ratio            float64      `json:"compression_ratio,omitempty"`
	Compression      string       `json:"compression,omitempty"`
	Files            int          `json:"files"`
	Parts            int          `json:"parts"`
	Tablespaces      []Tablespace `json:"tablespaces,omitempty"`
	// WAL archived from the backup's begin WAL up to the next backup's
	// (list-backups), or to the last archived segment (show-backup).
	WALFiles int    `json:"wal_files"`
	WALSize  int64  `json:"wal_size"`
	LastWAL  string `json:"last_wal,omitempty"`
	Previous string `json:"previous_backup,omitempty"`
	Next     string `json:"next_backup,omitempty"`
	Error    string `json:"error,omitempty"`
	Keep     bool   `json:"keep"`
	// Children are the finished backups that name this one as their
	// parent, oldest first.
	Children []string `json:"children,omitempty"`
	// Retention is the policy's verdict on a finished backup: VALID,
	// VALID:PARENT (retained only because a retained backup builds on
	// it), OBSOLETE or KEEP:STANDALONE.
	Retention string `json:"retention_status,omitempty"`
	Host      string `json:"host,omitempty"`
	CellarVer string `json:"cellar_version,omitempty"`
}

// Summaries are the backups, newest first, each with the WAL archived
// from it to the next finished backup (to the end of the archive with
// toEnd), its neighbours, the backups that build on it, and the
// retention status of a finished one: VALID, VALID:PARENT (see
// MarkParents), OBSOLETE (see MarkObsolete) or KEEP:STANDALONE.
func (c *Catalog) Summaries(toEnd bool) []Summary {
	rows := make([]Summary, 0, len(c.Backups))
	var done []int
	at := map[string]int{}
	for i, e := range c.Backups { // oldest first
		rows = append(rows, c.summaryOf(e))
		at[e.ID] = i
		if e.Status == StatusDone {
			done = append(done, i)
		}
	}
	for _, i := range done {
		if j, ok := at[rows[i].Parent]; ok && j != i {
			rows[j].Children = append(rows[j].Children, rows[i].ID)
		}
	}
	for k, i := range done {
		until := ""
		if k+1 < len(done) {
			rows[i].Next = rows[done[k+1]].ID
			if !toEnd {
				until = rows[done[k+1]].BeginWAL
			}
		}
		if k > 0 {
			rows[i].Previous = rows[done[k-1]].ID
		}
		rows[i].WALFiles, rows[i].WALSize, rows[i].LastWAL = c.WALBetween(rows[i].BeginWAL, until)
	}
	slices.Reverse(rows)
	return rows
}

func (c *Catalog) summaryOf(e Entry) Summary {
	m := e.Manifest
	if m == nil {
		return Summary{ID: e.ID, Server: c.Server, Status: e.Status, BeginTime: e.BeginTime, EndTime: e.EndTime, Error: e.Error, Host: e.Host}
	}
	r := SummaryOf(m)
	r.Status, r.Keep = e.Status, e.Keep
	if e.Status == StatusDone {
		switch {
		case e.Keep:
			r.Retention = "KEEP:STANDALONE"
		case e.Obsolete:
			r.Retention = "OBSOLETE"
		case e.NeededAsParent:
			r.Retention = "VALID:PARENT"
		default:
			r.Retention = "VALID"
		}
	}
	return r
}

// SummaryOf is a finished backup's summary from its manifest alone.
func SummaryOf(m *Manifest) Summary {
	return Summary{
		ID: m.ID, Server: m.Server, Status: m.Status, Type: m.BackupType(), Parent: m.Parent, ChainLength: m.Chain(), BeginTime: m.BeginTime, EndTime: m.EndTime,
		Duration: m.EndTime.Sub(m.BeginTime).Seconds(), PGVersion: m.PGVersion, PGVersionString: m.PGVersionString,
		PGData: m.PGData, SystemIdentifier: fmt.Sprint(m.SystemIdentifier), Standby: m.Standby, Timeline: m.Timeline,
		BeginWAL: m.BeginWAL, EndWAL: m.EndWAL, BeginLSN: m.BeginLSN, EndLSN: m.EndLSN,
		DataSize: m.DataSize, StoredSize: m.StoredSize, Ratio: m.Ratio(), Compression: m.Compression,
		Files: m.FileCount, Parts: m.PartCount, Tablespaces: m.Tablespaces, Host: m.Host, CellarVer: m.CellarVersion,
		Encryption: cmp.Or(m.Encryption, EncryptionNone), Sealed: m.Sealed,
	}
}

// HumanSize prints a byte count with one decimal in binary units.
func HumanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
