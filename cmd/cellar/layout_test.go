package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/cellar-backup/cellar"

// layer returns the layer a package belongs to: cmd, health (the checks
// of every workflow's preconditions, between cmd and the workflows), a
// workflow, catalog,
// cloud, a backend (a cloud subpackage), pg (PostgreSQL's own formats and
// protocol, a base layer beside cloud) or a test kit (internal/, which only
// tests import). Dependencies flow cmd -> workflows -> catalog -> cloud,
// and everything may use pg; workflows never import each other; backends
// are imported only by cmd.
func layer(pkg string) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	top, _, _ := strings.Cut(rel, "/")
	switch top {
	case "cmd":
		return "cmd"
	case "health":
		return "health"
	case "wal", "basebackup", "restore", "retention":
		return "workflow:" + top
	case "catalog":
		return "catalog"
	case "pg":
		return "pg"
	case "internal":
		return "testkit"
	case "cloud":
		if rel == "cloud" {
			return "cloud"
		}
		return "backend"
	}
	return "other:" + top
}

// allowed reports whether a package in layer from may import one in layer to.
func allowed(from, to string) bool {
	if from == to {
		return true
	}
	switch {
	case to == "testkit":
		return false // only tests import it, and they are not listed
	case from == "cmd":
		return true
	case from == "health":
		return strings.HasPrefix(to, "workflow:") || to == "catalog" || to == "cloud" || to == "pg"
	case strings.HasPrefix(from, "workflow:"):
		return to == "catalog" || to == "cloud" || to == "pg"
	case from == "catalog":
		return to == "cloud" || to == "pg"
	case from == "backend":
		return to == "cloud"
	case from == "testkit":
		return to == "pg" || to == "cloud" || to == "catalog"
	}
	return false
}

func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := fields[0]
		from := layer(pkg)
		if strings.HasPrefix(from, "other:") {
			t.Errorf("package %s is outside the layout (cmd, health, cloud, catalog, pg, wal, basebackup, restore, retention, internal)", pkg)
		}
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			checked++
			to := layer(imp)
			// The conformance suite is a backend-level package that only
			// tests import; backends may use each other's nothing else.
			if from == "backend" && to == "backend" && !strings.HasSuffix(imp, "/cloud/storagetest") {
				t.Errorf("%s imports %s: backends must not import each other", pkg, imp)
				continue
			}
			if !allowed(from, to) {
				t.Errorf("%s (%s) imports %s (%s): dependencies flow cmd -> workflows -> catalog -> cloud, with pg beside cloud", pkg, from, imp, to)
			}
		}
	}
	if checked == 0 {
		t.Fatal("go list found no imports inside the module: the check checked nothing")
	}
}

func TestLayerRules(t *testing.T) {
	for _, c := range []struct {
		from, to string
		ok       bool
	}{
		{module + "/wal", module + "/restore", false},
		{module + "/catalog", module + "/wal", false},
		{module + "/cloud", module + "/catalog", false},
		{module + "/wal", module + "/cloud/s3", false},
		{module + "/wal", module + "/catalog", true},
		{module + "/cmd/cellar", module + "/cloud/s3", true},
		{module + "/wal", module + "/pg", true},
		{module + "/health", module + "/retention", true},
		{module + "/health", module + "/cloud/s3", false},
		{module + "/retention", module + "/health", false},
		{module + "/catalog", module + "/pg", true},
		{module + "/pg", module + "/catalog", false},
		{module + "/pg", module + "/cloud", false},
		{module + "/cloud", module + "/pg", false},
		{module + "/wal", module + "/internal/pgtest", false},
		{module + "/cmd/cellar", module + "/internal/pgtest", false},
	} {
		if got := allowed(layer(c.from), layer(c.to)); got != c.ok {
			t.Errorf("%s -> %s allowed = %v, want %v", c.from, c.to, got, c.ok)
		}
	}
}
