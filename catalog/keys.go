// Package catalog owns the repository's layout and formats: where each
// object lives (keys), the envelope every object is stored in (codec,
// checksum, version), the repository's identity, the backup manifests and
// markers. The PostgreSQL names it files WAL under (WAL file names,
// timelines, LSNs) are package pg's. docs/FORMAT.md describes the same in
// prose.
package catalog

import (
	"context"
	"fmt"
	"strings"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// The key layout of one server's objects in a repository. Every key starts
// with the server's name, so that servers may share a repository URL.
//
//	<server>/identity                                   Identity
//	<server>/wal/<TTTTTTTTLLLLLLLL>/<segment>             a WAL segment
//	<server>/wal/<TTTTTTTTLLLLLLLL>/<segment>.partial     a partial segment
//	<server>/wal/<TTTTTTTTLLLLLLLL>/<segment>.<off>.backup a backup history file
//	<server>/wal/history/<TTTTTTTT>.history               a timeline history file
//	<server>/wal-stream/<segment>/<FFFFFFFF>-<TTTTTTTT>   a streamed chunk of a segment
//
// Grouping segments by timeline and log (4 GiB of WAL) keeps every listing
// that retention and list-wal need to a bounded number of calls; history
// files have a prefix of their own so that all timelines can be listed at
// once. Keys carry no codec extension: the codec is in the object's
// envelope, so a changed compression setting can never make a second copy
// of the same WAL file.

// IdentityKey is the key of the server's Identity.
func IdentityKey(server string) string { return server + "/identity" }

// WALPrefix is the prefix of all of a server's WAL objects.
func WALPrefix(server string) string { return server + "/wal/" }

// HistoryPrefix is the prefix of a server's timeline history files.
func HistoryPrefix(server string) string { return server + "/wal/history/" }

// StreamPrefix is the prefix of all of a server's streamed chunks.
func StreamPrefix(server string) string { return server + "/wal-stream/" }

// ChunkPrefix is the prefix of the streamed chunks of one segment.
func ChunkPrefix(server, segment string) string { return StreamPrefix(server) + segment + "/" }

// ChunkKey is the key of the streamed chunk of segment that holds its
// bytes from..to (eight hex digits each: keys list in offset order). A
// chunk is never replaced: a receive-wal that starts the segment again
// stores chunks of other ranges beside the earlier ones.
func ChunkKey(server, segment string, from, to int64) string {
	return fmt.Sprintf("%s%08X-%08X", ChunkPrefix(server, segment), from, to)
}

// DeleteChunks removes the streamed chunks of the segments stale names,
// found with one paged listing of StreamPrefix.
func DeleteChunks(ctx context.Context, store cloud.Storage, server string, stale func(segment string) bool) error {
	var keys []string
	prefix := StreamPrefix(server)
	err := store.List(ctx, prefix, func(o cloud.ObjectInfo) error {
		if seg, _, ok := strings.Cut(strings.TrimPrefix(o.Key, prefix), "/"); ok && stale(seg) {
			keys = append(keys, o.Key)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return cloud.DeleteAll(ctx, store, keys)
}

// WALDirPrefix is the prefix of the segments of one timeline and log.
func WALDirPrefix(server string, timeline, log uint32) string {
	return fmt.Sprintf("%s/wal/%08X%08X/", server, timeline, log)
}

// WALKey is the key of an archived WAL file.
func WALKey(server string, w pg.WALName) string {
	if w.Kind == pg.History {
		return HistoryPrefix(server) + w.Name
	}
	return WALDirPrefix(server, w.Timeline, w.Log) + w.Name
}

// ListWALFiles calls fn for every archived WAL file of a server (segments
// in timeline and segment order, then history files), from one paged
// listing of the server's WAL prefix. Objects whose key is not where
// WALKey puts their name are not Cellar's and are passed over.
func ListWALFiles(ctx context.Context, store cloud.Storage, server string, fn func(pg.WALName, cloud.ObjectInfo) error) error {
	return store.List(ctx, WALPrefix(server), func(o cloud.ObjectInfo) error {
		w, err := pg.ParseWALName(o.Key[strings.LastIndexByte(o.Key, '/')+1:])
		if err != nil || WALKey(server, w) != o.Key {
			return nil
		}
		return fn(w, o)
	})
}
