package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/cellar-backup/cellar"

// layer returns the layer a package belongs to: cmd, a workflow, catalog,
// cloud or a backend (a cloud subpackage). Dependencies flow
// cmd -> workflows -> catalog -> cloud; workflows never import each other;
// backends are imported only by cmd.
func layer(pkg string) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	top, _, _ := strings.Cut(rel, "/")
	switch top {
	case "cmd":
		return "cmd"
	case "wal", "basebackup", "restore", "retention":
		return "workflow:" + top
	case "catalog":
		return "catalog"
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
	case from == "cmd":
		return true
	case strings.HasPrefix(from, "workflow:"):
		return to == "catalog" || to == "cloud"
	case from == "catalog":
		return to == "cloud"
	case from == "backend":
		return to == "cloud"
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
			t.Errorf("package %s is outside the layout (cmd, cloud, catalog, wal, basebackup, restore, retention)", pkg)
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
				t.Errorf("%s (%s) imports %s (%s): dependencies flow cmd -> workflows -> catalog -> cloud", pkg, from, imp, to)
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
	} {
		if got := allowed(layer(c.from), layer(c.to)); got != c.ok {
			t.Errorf("%s -> %s allowed = %v, want %v", c.from, c.to, got, c.ok)
		}
	}
}
