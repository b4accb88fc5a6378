package pgtest

import (
	"context"
	"testing"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
)

// Contents reads a finished backup's parts and every entry of its file
// lists (in part order), as restore does.
func Contents(t testing.TB, store cloud.Storage, m *catalog.Manifest) ([]catalog.Part, []catalog.File) {
	t.Helper()
	ctx := context.Background()
	c, err := catalog.OpenContents(ctx, store, m)
	if err != nil {
		t.Fatalf("backup %s: %v", m.ID, err)
	}
	var files []catalog.File
	if err := c.AllFiles(ctx, func(f catalog.File) error { files = append(files, f); return nil }); err != nil {
		t.Fatalf("backup %s: %v", m.ID, err)
	}
	return c.Parts(), files
}
