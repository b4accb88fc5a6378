package basebackup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cellar-backup/cellar/catalog"
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
}

// scan lists what to back up of the data directory and the tablespaces:
// directories (all of them, so the empty ones PostgreSQL needs come back),
// regular files and symlinks. Tablespaces are recorded under
// pg_tblspc/<oid>/.
func scan(pgdata string, tablespaces []catalog.Tablespace) ([]entry, error) {
	var out []entry
	spc := map[string]catalog.Tablespace{}
	for _, t := range tablespaces {
		spc["pg_tblspc/"+strconv.FormatUint(uint64(t.OID), 10)] = t
	}
	var walk func(abs, rel string, top bool) error
	walk = func(abs, rel string, top bool) error {
		ents, err := os.ReadDir(abs)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && !top {
				return nil // a directory dropped while we read
			}
			return fmt.Errorf("reading %s: %w", abs, err)
		}
		unlogged := unloggedRelations(ents)
		for _, de := range ents {
			name := de.Name()
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
					out = append(out, e)
					if err := walk(a, r, false); err != nil {
						return err
					}
				case rel == "" && excludeContents[name]:
					// pg_wal elsewhere: an empty directory here.
					e.Type, e.Mode = catalog.TypeDir, 0o700
					out = append(out, e)
					if name == "pg_wal" {
						out = append(out, entry{File: catalog.File{Path: "pg_wal/archive_status", Type: catalog.TypeDir, Mode: 0o700, MTime: e.MTime}})
					}
				default:
					e.Type, e.Link = catalog.TypeSymlink, target
					out = append(out, e)
				}
			case info.IsDir():
				e.Type = catalog.TypeDir
				out = append(out, e)
				if rel == "" && excludeContents[name] {
					if name == "pg_wal" {
						out = append(out, entry{File: catalog.File{Path: "pg_wal/archive_status", Type: catalog.TypeDir, Mode: 0o700, MTime: e.MTime}})
					}
					continue
				}
				if err := walk(a, r, false); err != nil {
					return err
				}
			case info.Mode().IsRegular():
				e.Type, e.Size = catalog.TypeFile, info.Size()
				out = append(out, e)
			}
			// Sockets, pipes and devices have no place in a data directory.
		}
		return nil
	}
	if err := walk(pgdata, "", true); err != nil {
		return nil, err
	}
	return out, nil
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
		if node, _, ok := relFile(name); ok && unlogged[node] && !strings.HasSuffix(name, "_init") {
			return true
		}
	}
	return false
}

// unloggedRelations returns the relfilenodes of a database directory that
// have an init fork: unlogged relations, whose other forks PostgreSQL
// resets at recovery and a backup leaves out.
func unloggedRelations(ents []os.DirEntry) map[string]bool {
	var m map[string]bool
	for _, de := range ents {
		if node, ok := strings.CutSuffix(de.Name(), "_init"); ok && isDigits(node) {
			if m == nil {
				m = map[string]bool{}
			}
			m[node] = true
		}
	}
	return m
}

// relFile splits a relation file name "12345", "12345.2", "12345_fsm" or
// "12345_vm.1" into its relfilenode and the rest.
func relFile(name string) (node, rest string, ok bool) {
	i := strings.IndexAny(name, "._")
	if i < 0 {
		i = len(name)
	}
	node = name[:i]
	return node, name[i:], isDigits(node)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// plan orders the regular files for the part writers: the largest first,
// so that the last files to be read are small ones and the parts finish
// together.
func plan(ents []entry) (files, others []entry) {
	for _, e := range ents {
		if e.Type == catalog.TypeFile {
			files = append(files, e)
		} else {
			others = append(others, e)
		}
	}
	sort.SliceStable(files, func(i, j int) bool {
		if files[i].Size != files[j].Size {
			return files[i].Size > files[j].Size
		}
		return files[i].Path < files[j].Path
	})
	sort.SliceStable(others, func(i, j int) bool { return path.Clean(others[i].Path) < path.Clean(others[j].Path) })
	return files, others
}
