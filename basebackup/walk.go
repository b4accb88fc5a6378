package basebackup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/pg"
)

// What a base backup leaves out, after PostgreSQL's documentation
// ("Making a Base Backup Using the Low Level API") and its own
// pg_basebackup.

// excludeContents are directories kept empty in the backup.
var excludeContents = map[string]bool{
	"pg_wal":       true,
	"pg_dynshmem":  true,
	"pg_notify":    true,
	"pg_replslot":  true,
	"pg_serial":    true,
	"pg_snapshots": true,
	"pg_stat_tmp":  true,
	"pg_subtrans":  true,
}

// excludeFiles are files of the data directory's top level left out.
// The signal files are left out too: restore writes the one it needs.
var excludeFiles = map[string]bool{
	"postmaster.pid":           true,
	"postmaster.opts":          true,
	"backup_label":             true,
	"backup_label.old":         true,
	"tablespace_map":           true,
	"tablespace_map.old":       true,
	"backup_manifest":          true,
	"recovery.signal":          true,
	"standby.signal":           true,
	"current_logfiles.tmp":     true,
	"postgresql.auto.conf.tmp": true,
}

// entry is one thing to back up.
type entry struct {
	catalog.File
	abs string // where to read it
	// parent is, in an incremental, the parent's entry of a relation
	// file of the same path.
	parent *parentFile
}

// walk calls emit for what to back up of the data directory and the
// tablespaces, in path order (catalog.ComparePaths): directories (all of
// them, so the empty ones PostgreSQL needs come back), regular files and
// symlinks. Tablespaces are recorded under pg_tblspc/<oid>/. It holds the
// names of one directory at a time and of the directories above it, never
// the whole tree.
func walk(pgdata string, tablespaces []catalog.Tablespace, emit func(entry) error) error {
	spc := map[string]catalog.Tablespace{}
	for _, t := range tablespaces {
		spc["pg_tblspc/"+strconv.FormatUint(uint64(t.OID), 10)] = t
	}
	var dir func(abs, rel string, top bool) error
	dir = func(abs, rel string, top bool) error {
		names, err := readNames(abs)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && !top {
				return nil // a directory dropped while we read
			}
			return fmt.Errorf("reading %s: %w", abs, err)
		}
		unlogged := unloggedRelations(names)
		for _, name := range names {
			r := name
			if rel != "" {
				r = rel + "/" + name
			}
			a := filepath.Join(abs, name)
			if skip(rel, name, unlogged) {
				continue
			}
			info, err := os.Lstat(a)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return fmt.Errorf("reading %s: %w", a, err)
			}
			e := entry{File: catalog.File{Path: r, Mode: uint32(info.Mode().Perm()), MTime: info.ModTime().UTC()}, abs: a}
			emptyDir := func() error {
				if err := emit(e); err != nil {
					return err
				}
				if name == "pg_wal" {
					return emit(entry{File: catalog.File{Path: "pg_wal/archive_status", Type: catalog.TypeDir, Mode: 0o700, MTime: e.MTime}})
				}
				return nil
			}
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(a)
				if err != nil {
					return fmt.Errorf("reading the link %s: %w", a, err)
				}
				t, isSpc := spc[r]
				switch {
				case isSpc:
					// A tablespace: its files go under pg_tblspc/<oid>/.
					st, err := os.Stat(a)
					if err != nil {
						return fmt.Errorf("tablespace %s at %s: %w", t.Name, t.Location, err)
					}
					e.Type, e.Mode = catalog.TypeDir, uint32(st.Mode().Perm())
					if err := emit(e); err != nil {
						return err
					}
					if err := dir(a, r, false); err != nil {
						return err
					}
				case rel == "" && excludeContents[name]:
					// pg_wal elsewhere: an empty directory here.
					e.Type, e.Mode = catalog.TypeDir, 0o700
					if err := emptyDir(); err != nil {
						return err
					}
				default:
					e.Type, e.Link = catalog.TypeSymlink, target
					if err := emit(e); err != nil {
						return err
					}
				}
			case info.IsDir():
				e.Type = catalog.TypeDir
				if rel == "" && excludeContents[name] {
					if err := emptyDir(); err != nil {
						return err
					}
					continue
				}
				if err := emit(e); err != nil {
					return err
				}
				if err := dir(a, r, false); err != nil {
					return err
				}
			case info.Mode().IsRegular():
				e.Type, e.Size = catalog.TypeFile, info.Size()
				if err := emit(e); err != nil {
					return err
				}
			}
			// Sockets, pipes and devices have no place in a data directory.
		}
		return nil
	}
	return dir(pgdata, "", true)
}

// readNames returns the sorted names in a directory: only names, so that
// a database of a million relations costs tens of megabytes, not the
// hundreds a full directory listing would.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// skip reports whether the entry name of directory rel stays out.
func skip(rel, name string, unlogged map[string]bool) bool {
	if rel == "" && excludeFiles[name] {
		return true
	}
	if name == "pg_internal.init" || strings.HasPrefix(name, "pgsql_tmp") {
		return true
	}
	if unlogged != nil {
		if node, fork, ok := pg.RelationFileName(name); ok && unlogged[node] && fork != "init" {
			return true
		}
	}
	return false
}

// unloggedRelations returns the relfilenodes of a database directory that
// have an init fork: unlogged relations, whose other forks PostgreSQL
// resets at recovery and a backup leaves out.
func unloggedRelations(names []string) map[string]bool {
	var m map[string]bool
	for _, name := range names {
		if node, fork, ok := pg.RelationFileName(name); ok && fork == "init" {
			if m == nil {
				m = map[string]bool{}
			}
			m[node] = true
		}
	}
	return m
}
