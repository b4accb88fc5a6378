package cloud_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cloud/mem"
)

// batchStore is a backend with batch deletes and temporary files to clean.
type batchStore struct {
	*mem.Storage
	batches, cleans int
}

func (b *batchStore) DeleteBatch(ctx context.Context, keys []string) error {
	b.batches++
	for _, k := range keys {
		if err := b.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

func (b *batchStore) CleanTemp(context.Context, string, time.Time) (int, error) {
	b.cleans++
	return 0, nil
}

func TestChecked(t *testing.T) {
	ctx := context.Background()
	plain := cloud.Checked(mem.New(nil))
	if _, ok := plain.(cloud.BatchDeleter); ok {
		t.Error("a backend without batch deletes got one through the wrapper")
	}
	if _, ok := plain.(cloud.TempCleaner); ok {
		t.Error("a backend without temporary files got a cleaner through the wrapper")
	}
	if cloud.Checked(plain) != plain {
		t.Error("wrapping twice wraps twice")
	}
	for _, key := range []string{"", "/abs", "a/../b", "dir/", "a//b"} {
		err := plain.Put(ctx, key, strings.NewReader("x"), 1)
		if err == nil || !strings.HasPrefix(err.Error(), strings.TrimSpace("put "+key)) {
			t.Errorf("Put(%q) = %v, want a refusal naming the key", key, err)
		}
		if _, err := plain.Stat(ctx, key); err == nil {
			t.Errorf("Stat(%q) accepted", key)
		}
	}
	// Errors name the operation and the key, once.
	_, err := plain.Get(ctx, "no/such")
	if !errors.Is(err, cloud.ErrNotExist) || strings.Count(err.Error(), "no/such") != 1 {
		t.Errorf("Get of a missing key = %v", err)
	}

	b := &batchStore{Storage: mem.New(nil)}
	both := cloud.Checked(b)
	if _, ok := both.(cloud.Creator); !ok {
		t.Fatal("the wrapper has no conditional create")
	}
	if _, ok := both.(cloud.TempCleaner); !ok {
		t.Fatal("the wrapper hides the backend's temporary file cleaner")
	}
	var keys []string
	for _, k := range []string{"a/1", "a/2", "a/3"} {
		if err := cloud.Create(ctx, both, k, strings.NewReader("x"), 1); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if err := cloud.Create(ctx, both, "a/1", strings.NewReader("y"), 1); !errors.Is(err, cloud.ErrExist) {
		t.Errorf("a second create = %v, want ErrExist", err)
	}
	if err := cloud.DeleteAll(ctx, both, keys); err != nil || b.batches != 1 {
		t.Errorf("DeleteAll through the wrapper: %v, %d batches", err, b.batches)
	}
	if err := both.(cloud.BatchDeleter).DeleteBatch(ctx, []string{"ok", "../bad"}); err == nil || b.batches != 1 {
		t.Errorf("a batch with a bad key = %v (%d batches sent)", err, b.batches)
	}
	if _, err := both.(cloud.TempCleaner).CleanTemp(ctx, "", time.Now()); err != nil || b.cleans != 1 {
		t.Errorf("CleanTemp through the wrapper: %v", err)
	}
}
