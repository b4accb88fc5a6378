package pg

import "testing"

func TestIsRelationPath(t *testing.T) {
	for path, want := range map[string]bool{
		"base/5/1259":                               true,
		"base/5/1259.3":                             true,
		"base/5/1259_fsm":                           true,
		"base/16384/16390_vm.1":                     true,
		"base/16384/16390_init":                     true,
		"global/1262":                               true,
		"pg_tblspc/16385/PG_15_202209061/5/16386":   true,
		"pg_tblspc/16385/PG_15_202209061/5/16386.1": true,
		"global/pg_control":                         false,
		"global/pg_filenode.map":                    false,
		"base/5/pg_internal.init":                   false,
		"base/5/PG_VERSION":                         false,
		"base/5/1259_xyz":                           false,
		"base/5/1259.":                              false,
		"base/5/1259.x":                             false,
		"base/pgsql_tmp/1259":                       false,
		"pg_xact/0000":                              false,
		"1259":                                      false,
		"pg_tblspc/16385/PG_15_202209061/1259":      false,
	} {
		if got := IsRelationPath(path); got != want {
			t.Errorf("IsRelationPath(%q) = %v, want %v", path, got, want)
		}
	}
}
