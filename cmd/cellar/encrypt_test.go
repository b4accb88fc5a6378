package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/internal/pgtest"
)

// The end-to-end tests of client-side encryption (issue 17): the database
// host's configuration holds only a public key; it archives and backs up,
// lists and cannot restore; the restore side's configuration adds the
// private key and restores to a point in time.

// keygen runs cellar keygen into dir and returns the key file and the
// public key.
func keygen(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	key := filepath.Join(dir, name)
	r := cellar(t, nil, "keygen", "--output", key)
	pub, ok := strings.CutPrefix(strings.TrimSpace(r.stdout), "Public key: ")
	if r.code != 0 || !ok {
		t.Fatalf("keygen: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	return key, pub
}

// withSetting writes a copy of conf with lines added to its last section
// ([main]).
func withSetting(t *testing.T, conf, name, lines string) string {
	t.Helper()
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(filepath.Dir(conf), name)
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	appendConf(t, out, "\n"+lines+"\n")
	return out
}

// secretValue is a table value that must never be found in the clear in
// the repository (a run of 64 of its bytes).
var secretValue = strings.Repeat("cellar-plaintext-canary-", 8)

func TestEncryption(t *testing.T) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			keys := openTempDir(t, "cellar-keys")
			key1, pub1 := keygen(t, keys, "restore1.key")
			c, conf, env := backupCluster(t, kind, "encryption = age\nencryption_recipients = "+pub1+"\n")
			// The restored server's restore_command (wal-fetch) runs as
			// its owner, who holds the private key on the restore side.
			c.Chown(key1)
			restoreConf := withSetting(t, conf, "restore.conf", "encryption_identity_file = "+key1)

			c.Pgbench(t, "-i", "-s", "2", "-q")
			c.Exec(t, "CREATE TABLE marker (id int primary key, note text)")
			c.Exec(t, "INSERT INTO marker VALUES (0, '"+secretValue+"')")
			if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
				t.Fatalf("backup on the database host: exit %d: %s", r.code, r.stderr)
			}
			rows := listBackups(t, env, conf)
			if len(rows) != 1 || rows[0].Status != catalog.StatusDone {
				t.Fatalf("list-backups on the database host: %+v", rows)
			}
			id := rows[0].ID
			times := markers(t, c, 1, 6)
			c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)

			// The database host cannot restore: exit 1, naming the setting
			// and the object, and nothing written.
			dir := restoreDir(t)
			r := cellar(t, env, "--config", conf, "restore", "main", "latest", dir)
			if r.code != 1 || !strings.Contains(r.stderr, "encryption_identity_file") || !strings.Contains(r.stderr, "main/") {
				t.Fatalf("restore without the private key: exit %d: %s", r.code, r.stderr)
			}
			if _, err := os.Stat(dir); err == nil {
				if entries, _ := os.ReadDir(dir); len(entries) > 0 {
					t.Fatalf("a refused restore wrote %d entries into %s", len(entries), dir)
				}
			}

			// The catalog on the database host: encrypted, sealed.
			if r := cellar(t, env, "--config", conf, "list-backups", "main", "--format", "json"); r.code != 0 ||
				!strings.Contains(r.stdout, `"encryption": "age"`) || !strings.Contains(r.stdout, `"sealed": true`) {
				t.Fatalf("list-backups --format json on the database host: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			if r := cellar(t, env, "--config", restoreConf, "list-backups", "main"); r.code != 0 || !strings.Contains(r.stdout, "Encrypted") || strings.Contains(r.stdout, "(encrypted)") {
				t.Fatalf("list-backups on the restore side: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			// check: the database host, which cannot read back, is fine;
			// the restore side's key opens the newest backup; a host with
			// encryption = none is told; a wrong key is told.
			if r := cellar(t, env, "--config", conf, "check", "main"); r.code != 0 {
				t.Fatalf("check on the database host: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			policy := withSetting(t, conf, "policy.conf", "retention_policy = REDUNDANCY 1")
			for _, args := range [][]string{{"cron"}, {"retention", "main", "--dry-run"}, {"show-backup", "main", "latest"}} {
				if r := cellar(t, env, append([]string{"--config", policy}, args...)...); r.code != 0 {
					t.Fatalf("%v on the database host: exit %d: %s%s", args, r.code, r.stdout, r.stderr)
				}
			}
			if r := cellar(t, env, "--config", restoreConf, "check", "main"); r.code != 0 {
				t.Fatalf("check on the restore side: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			plain := withSetting(t, conf, "plain.conf", "encryption = none")
			if r := cellar(t, env, "--config", plain, "check", "main"); r.code == 0 || !strings.Contains(r.stdout, "encryption = none") {
				t.Fatalf("check with encryption = none on an encrypted repository: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}

			// A drill on the restore side; its record keeps the query's
			// answer (a table value) sealed, and the database host still
			// sees the outcome.
			if kind == "file" {
				drillConf := withSetting(t, restoreConf, "drill.conf", "drill_directory = "+openTempDir(t, "cellar-drills")+
					"\ndrill_query = select note from marker where id = 0")
				if r := cellar(t, env, "--config", drillConf, "drill", "main"); r.code != 0 || !strings.Contains(r.stdout, "Query answered: "+secretValue) {
					t.Fatalf("drill on the restore side: exit %d: %s%s", r.code, r.stdout, r.stderr)
				}
				if r := cellar(t, env, "--config", conf, "--format", "json", "list-drills", "main"); r.code != 0 ||
					!strings.Contains(r.stdout, `"result": "OK"`) || strings.Contains(r.stdout, "canary") {
					t.Fatalf("list-drills on the database host: exit %d: %s%s", r.code, r.stdout, r.stderr)
				}
				if r := cellar(t, env, "--config", conf, "check", "main"); r.code != 0 || !strings.Contains(r.stdout, "drill: OK") {
					t.Fatalf("check on the database host after a drill: exit %d: %s%s", r.code, r.stdout, r.stderr)
				}
			}

			// The restore side restores to a point in time.
			target := times[2].Add(10 * time.Millisecond).UTC().Format("2006-01-02 15:04:05.000000+00")
			dir = restoreDir(t)
			if r := cellar(t, env, "--config", restoreConf, "restore", "main", id, dir, "--target-time", target); r.code != 0 {
				t.Fatalf("restore with the private key: exit %d: %s", r.code, r.stderr)
			}
			rc := startRestored(t, c, dir, env)
			if n := rc.QueryInt64(t, "SELECT count(*) FROM marker WHERE id > 0"); n != 3 {
				t.Fatalf("%d markers after recovery to the third one's time, want 3", n)
			}
			if got := rc.QueryString(t, "SELECT note FROM marker WHERE id = 0"); got != secretValue {
				t.Fatalf("the restored value is %q", got)
			}
			rc.Stop(t)
			if r := cellar(t, env, "--config", restoreConf, "verify", "main", id); r.code != 0 {
				t.Fatalf("verify with the private key: exit %d: %s", r.code, r.stderr)
			}

			store := openRepository(t, conf, env)
			raw := catalog.Unsealed(store)
			checkSealed(t, raw, kind)

			// A part opens with age, zstd and tar, as the README shows.
			if kind == "file" {
				checkPartByTools(t, raw, id, key1)
			}

			// PostgreSQL archiving an archived segment again: recognised
			// without the private key; a different file of the same name
			// refused.
			seg := archivedSegment(t, c)
			if r := cellar(t, env, "--config", conf, "wal-push", "main", seg); r.code != 0 {
				t.Fatalf("wal-push of an archived segment again: exit %d: %s", r.code, r.stderr)
			}
			b, _ := os.ReadFile(seg)
			b[len(b)-1] ^= 0xff
			os.WriteFile(seg, b, 0o600)
			if r := cellar(t, env, "--config", conf, "wal-push", "main", seg); r.code == 0 || !strings.Contains(r.stderr, "already archived") {
				t.Fatalf("wal-push of a different file under an archived name: exit %d: %s", r.code, r.stderr)
			}

			// A wrong private key: exit 1 naming the setting, nothing
			// written.
			key3, _ := keygen(t, keys, "other.key")
			wrongConf := withSetting(t, conf, "wrong.conf", "encryption_identity_file = "+key3)
			dir = restoreDir(t)
			r = cellar(t, env, "--config", wrongConf, "restore", "main", id, dir)
			if r.code != 1 || !strings.Contains(r.stderr, "encryption_identity_file") {
				t.Fatalf("restore with a wrong private key: exit %d: %s", r.code, r.stderr)
			}
			if entries, _ := os.ReadDir(dir); len(entries) > 0 {
				t.Fatalf("a restore with a wrong key wrote %d entries", len(entries))
			}
			if r := cellar(t, env, "--config", wrongConf, "check", "main"); r.code == 0 || !strings.Contains(r.stdout, "encryption_identity_file") {
				t.Fatalf("check with a wrong private key: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}

			// Key rotation: new objects to the new key; the old backup
			// opens with the old key, the new one with the new, and both
			// with both.
			key2, pub2 := keygen(t, keys, "restore2.key")
			c.Chown(key2)
			// The database host's own configuration, which archive_command
			// reads too.
			appendConf(t, conf, "\nencryption_recipients = "+pub2+"\n")
			rotated := conf
			c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
			if r := cellar(t, env, "--config", rotated, "backup", "main", "--fast", "--quiet"); r.code != 0 {
				t.Fatalf("backup after rotation: exit %d: %s", r.code, r.stderr)
			}
			id2 := listBackups(t, env, rotated)[0].ID
			both := withSetting(t, rotated, "both.conf", "encryption_identity_file = "+key1+", "+key2)
			newOnly := withSetting(t, rotated, "new.conf", "encryption_identity_file = "+key2)
			for _, tc := range []struct {
				conf, id string
				ok       bool
			}{{both, id, true}, {both, id2, true}, {newOnly, id2, true}, {newOnly, id, false}} {
				r := cellar(t, env, "--config", tc.conf, "verify", "main", tc.id)
				if (r.code == 0) != tc.ok || (!tc.ok && !strings.Contains(r.stderr, "encryption_identity_file")) {
					t.Fatalf("verify %s with %s: exit %d: %s%s", tc.id, filepath.Base(tc.conf), r.code, r.stdout, r.stderr)
				}
			}

			// A tampered part: verify names it.
			if kind == "file" {
				part := sealedPart(t, raw, id)
				damage(t, raw, part)
				r := cellar(t, env, "--config", restoreConf, "verify", "main", id)
				if r.code == 0 || !strings.Contains(r.stdout+r.stderr, filepath.Base(part)) {
					t.Fatalf("verify of a tampered part: exit %d: %s%s", r.code, r.stdout, r.stderr)
				}
			}
		})
	}
}

// checkSealed reads every object as stored: each but the identity is
// sealed, and none holds a run of the secret value or the SHA-256 of a
// file it backs up.
func checkSealed(t *testing.T, raw cloud.Storage, kind string) {
	t.Helper()
	ctx := context.Background()
	pgVersion := sha256.Sum256([]byte("15\n")) // base/1/PG_VERSION, in every file list
	forbidden := [][]byte{[]byte(secretValue[:64]), []byte(hex.EncodeToString(pgVersion[:]))}
	n := 0
	err := raw.List(ctx, "main/", func(oi cloud.ObjectInfo) error {
		rc, err := raw.Get(ctx, oi.Key)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		n++
		for _, f := range forbidden {
			if bytes.Contains(b, f) {
				t.Errorf("%s holds %q in the clear", oi.Key, f)
			}
		}
		if strings.HasSuffix(oi.Key, "/identity") {
			return nil
		}
		if strings.HasSuffix(oi.Key, catalog.SealedSuffix) {
			if !bytes.HasPrefix(b, []byte("age-encryption.org/v1\n")) {
				t.Errorf("%s is not an age stream", oi.Key)
			}
			return nil
		}
		h, err := catalog.ClearHeader(ctx, raw, oi.Key)
		if err != nil || h.Encryption != catalog.EncryptionAge || h.SHA256 != "" || h.Size != 0 {
			t.Errorf("%s: header %+v, %v; want encryption age with no size or checksum", oi.Key, h, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("%s: only %d objects in the repository", kind, n)
	}
}

// sealedPart returns the key of the first part of backup id.
func sealedPart(t *testing.T, raw cloud.Storage, id string) string {
	t.Helper()
	var key string
	raw.List(context.Background(), "main/base/"+id+"/", func(oi cloud.ObjectInfo) error {
		if key == "" && strings.HasSuffix(oi.Key, ".tar.zst"+catalog.SealedSuffix) {
			key = oi.Key
		}
		return nil
	})
	if key == "" {
		t.Fatalf("backup %s has no sealed part", id)
	}
	return key
}

// checkPartByTools opens a part with the age library (as age -d -i does),
// then zstd -d and tar -t.
func checkPartByTools(t *testing.T, raw cloud.Storage, id, keyFile string) {
	t.Helper()
	rc, err := raw.Get(context.Background(), sealedPart(t, raw, id))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	kf, _ := os.Open(keyFile)
	defer kf.Close()
	ids, err := age.ParseIdentities(kf)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := age.Decrypt(rc, ids...)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "zstd -d | tar -t")
	cmd.Stdin = plain
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), "PG_VERSION") {
		t.Fatalf("age | zstd -d | tar -t: %v\n%s", err, out)
	}
}

// archivedSegment copies a segment that PostgreSQL archived (marked .done)
// out of pg_wal, for pushing again.
func archivedSegment(t *testing.T, c interface{ DataDir() string }) string {
	t.Helper()
	status := filepath.Join(c.DataDir(), "pg_wal", "archive_status")
	entries, err := os.ReadDir(status)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".done")
		if !ok || len(name) != 24 {
			continue
		}
		b, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", name))
		if err != nil {
			continue
		}
		out := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(out, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return out
	}
	t.Fatal("no archived segment left in pg_wal")
	return ""
}

// TestEncryptionMixed turns encryption on in a repository that has a
// backup and WAL in the clear: both kinds read on, list-backups says which
// backups are encrypted, a restore of the old backup replays WAL of both
// kinds, and incrementals need the private key on the backing-up host.
func TestEncryptionMixed(t *testing.T) {
	keys := openTempDir(t, "cellar-keys")
	key, pub := keygen(t, keys, "restore.key")
	c, conf, env := backupCluster(t, "file", "")
	c.Chown(key)
	c.Pgbench(t, "-i", "-s", "2", "-q")
	c.Exec(t, "CREATE TABLE marker (id int primary key)")
	if r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--quiet"); r.code != 0 {
		t.Fatalf("backup in the clear: exit %d: %s", r.code, r.stderr)
	}
	markers(t, c, 1, 3)
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)

	// A host set to encrypt that meets WAL in the clear is told, even
	// with only the repository configured.
	b, _ := os.ReadFile(conf)
	var repoOnly []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "conninfo") && !strings.HasPrefix(l, "pgdata") {
			repoOnly = append(repoOnly, l)
		}
	}
	ageConf := filepath.Join(filepath.Dir(conf), "repo-only.conf")
	os.WriteFile(ageConf, []byte(strings.Join(repoOnly, "\n")+"\nencryption = age\nencryption_recipients = "+pub+"\n"), 0o644)
	if r := cellar(t, env, "--config", ageConf, "check", "main"); r.code == 0 || !strings.Contains(r.stdout, "is not encrypted but encryption = age") {
		t.Fatalf("check with encryption = age on WAL in the clear: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}

	// Encryption on, for archive_command too.
	appendConf(t, conf, "\nencryption = age\nencryption_recipients = "+pub+"\n")
	markers(t, c, 4, 3)
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)
	r := cellar(t, env, "--config", conf, "backup", "main", "--fast", "--type", "incr")
	if r.code != 0 || !strings.Contains(r.stderr, "taking a full backup instead") {
		t.Fatalf("incr on the database host (no private key): exit %d: %s", r.code, r.stderr)
	}
	rows := listBackups(t, env, conf)
	if len(rows) != 2 || rows[0].Type != "full" {
		t.Fatalf("list-backups: %+v", rows)
	}
	restoreConf := withSetting(t, conf, "restore.conf", "encryption_identity_file = "+key)
	text := cellar(t, env, "--config", restoreConf, "list-backups", "main").stdout
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], " - Encrypted") || strings.Contains(lines[1], "Encrypted") {
		t.Fatalf("list-backups should mark the newer backup only as encrypted:\n%s", text)
	}
	// With the private key, an incremental on the encrypted backup.
	markers(t, c, 7, 3)
	if r := cellar(t, env, "--config", restoreConf, "backup", "main", "--fast", "--type", "incr", "--quiet"); r.code != 0 {
		t.Fatalf("incr with the private key: exit %d: %s", r.code, r.stderr)
	}
	if rows := listBackups(t, env, restoreConf); rows[0].Type != "incr" || rows[0].Parent != rows[1].ID {
		t.Fatalf("after incr with the private key: %+v", rows[0])
	}
	if r := cellar(t, env, "--config", restoreConf, "check", "main"); r.code != 0 {
		t.Fatalf("check of the mixed repository: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	// The database host again: the parent's block maps are sealed to it.
	r = cellar(t, env, "--config", conf, "backup", "main", "--fast", "--type", "incr")
	if r.code != 0 || !strings.Contains(r.stderr, "no encryption_identity_file") {
		t.Fatalf("incr on an encrypted parent without the private key: exit %d: %s", r.code, r.stderr)
	}
	markers(t, c, 10, 2)
	c.WaitArchived(t, c.SwitchWAL(t), 2*time.Minute)

	// The clear backup, recovered through clear and sealed WAL to the end;
	// the encrypted incremental too.
	for _, id := range []string{rows[len(rows)-1].ID, "latest"} {
		dir := restoreDir(t)
		if r := cellar(t, env, "--config", restoreConf, "restore", "main", id, dir); r.code != 0 {
			t.Fatalf("restore %s: exit %d: %s", id, r.code, r.stderr)
		}
		rc := startRestored(t, c, dir, env)
		if n := rc.QueryInt64(t, "SELECT count(*) FROM marker"); n != 11 {
			t.Fatalf("restore %s: %d markers after recovery, want 11", id, n)
		}
		rc.Stop(t)
	}
}

// giveToServerUser gives path to the user PostgreSQL runs as in the tests
// (when they run as root), before any cluster exists.
func giveToServerUser(t *testing.T, path string) {
	t.Helper()
	if os.Getuid() != 0 {
		return
	}
	u, err := user.Lookup(pgtest.ServerUserName)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}
