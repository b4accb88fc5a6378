package mem_test

import (
	"testing"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
	"github.com/cellar-backup/cellar/cloud/storagetest"
)

// The in-memory backend holds whole objects, so it runs the conformance
// suite but not the memory bound.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(*testing.T) cloud.Storage { return mem.New(nil) }, storagetest.Options{PartSize: 1 << 20, Concurrency: 1})
}
