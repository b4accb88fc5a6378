package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cellar-backup/cellar/cloud"
)

// An incremental backup names its parent; the parent's parent and so on
// down to a full backup make its chain, which restore, verify and the next
// incremental read.

// MaxChain is the most backups a chain may hold (incremental_max_chain
// allows 100; restore packs a chain position in a byte).
const MaxChain = 255

// ErrBrokenChain marks a chain that does not hold what its newest backup
// needs.
var ErrBrokenChain = errors.New("the backup chain is broken")

// Link is one backup of a chain with what it holds.
type Link struct {
	Manifest *Manifest
	Contents *Contents
}

// ChainError is a backup of a chain that could not be read: Key names the
// missing or damaged object (a manifest or an index).
type ChainError struct {
	Key string
	Err error
}

func (e *ChainError) Error() string { return e.Err.Error() }
func (e *ChainError) Unwrap() error { return e.Err }

// OpenChain reads the manifests and contents of the backups m builds on
// and of m, oldest (the full) first, m last. A parent's manifest that
// cannot be read, or an index that is missing or damaged, gives a
// *ChainError; other errors (of the store) come as they are.
func OpenChain(ctx context.Context, store cloud.Storage, m *Manifest) ([]Link, error) {
	var chain []Link
	for cur := m; ; {
		c, err := OpenContents(ctx, store, cur)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, cloud.ErrNotExist) {
				return nil, err
			}
			key := ManifestKey(cur.Server, cur.ID)
			if cur.Index != nil {
				key = cur.Index.Key
			}
			return nil, &ChainError{Key: key, Err: err}
		}
		chain = append(chain, Link{cur, c})
		if cur.Parent == "" {
			break
		}
		if len(chain) >= MaxChain {
			return nil, fmt.Errorf("%w: backup %s: a chain of more than %d backups", ErrBrokenChain, m.ID, MaxChain)
		}
		next, err := ReadManifest(ctx, store, cur.Server, cur.Parent)
		if err != nil {
			return nil, &ChainError{Key: ManifestKey(cur.Server, cur.Parent), Err: fmt.Errorf("%w: backup %s builds on %s: %w", ErrBrokenChain, cur.ID, cur.Parent, err)}
		}
		cur = next
	}
	slices.Reverse(chain)
	return chain, nil
}
