package pg

import "strings"

// RelationFileName splits the name of a relation data file, "12345",
// "12345.2", "12345_fsm" or "12345_vm.1", into its relfilenode and fork
// ("", "fsm", "vm" or "init"); ok is false for any other name.
func RelationFileName(name string) (node, fork string, ok bool) {
	name, seg, segmented := strings.Cut(name, ".")
	if segmented && !isDigits(seg) {
		return "", "", false
	}
	node, fork, _ = strings.Cut(name, "_")
	switch fork {
	case "", "fsm", "vm", "init":
	default:
		return "", "", false
	}
	return node, fork, isDigits(node)
}

// IsRelationPath reports whether a path relative to the data directory
// (tablespaces under pg_tblspc/<oid>/) is a relation data file, of any
// fork and segment, of a database, of the global tablespace or of a
// tablespace.
func IsRelationPath(path string) bool {
	i := strings.LastIndexByte(path, '/')
	if i < 0 {
		return false
	}
	if _, _, ok := RelationFileName(path[i+1:]); !ok {
		return false
	}
	dir := strings.Split(path[:i], "/")
	switch {
	case len(dir) == 1:
		return dir[0] == "global"
	case len(dir) == 2:
		return dir[0] == "base" && isDigits(dir[1])
	case len(dir) == 4:
		return dir[0] == "pg_tblspc" && isDigits(dir[1]) && strings.HasPrefix(dir[2], "PG_") && isDigits(dir[3])
	}
	return false
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
