package pgtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// ConnStringDB is ConnString for another database of the server.
func (c *Cluster) ConnStringDB(db string) string {
	return strings.Replace(c.ConnString(), "dbname=postgres", "dbname="+quoteConnValue(db), 1)
}

func quoteConnValue(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// ExecIn runs a statement (or several, separated by semicolons, without
// args) on a new connection to database db.
func (c *Cluster) ExecIn(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnStringDB(db))
	if err != nil {
		t.Fatalf("pgtest: connect to database %s on port %d: %v", db, c.port, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: in database %s: %s: %v", db, sql, err)
	}
}

// Fingerprint describes the contents of every permanent table of every
// database that accepts connections: for each, keyed "db/schema.table", its
// tablespace, row count, the sum of its first numeric column and an MD5
// digest over its rows (sorted, so row order on disk does not matter).
// Two clusters with equal fingerprints hold the same rows. Tables for which
// skip returns true are left out (skip may be nil). Unlogged and temporary
// tables are left out: a restore brings them back empty.
func (c *Cluster) Fingerprint(t testing.TB, skip func(db, table string) bool) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*queryTimeout)
	defer cancel()
	var dbs []string
	for _, row := range c.Query(t, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1") {
		dbs = append(dbs, row[0].(string))
	}
	fp := map[string]string{}
	for _, db := range dbs {
		conn, err := pgx.Connect(ctx, c.ConnStringDB(db))
		if err != nil {
			t.Fatalf("pgtest: connect to database %s on port %d: %v", db, c.port, err)
		}
		if err := fingerprintDB(ctx, conn, db, skip, fp); err != nil {
			conn.Close(context.Background())
			t.Fatalf("pgtest: fingerprint of database %s: %v", db, err)
		}
		conn.Close(context.Background())
	}
	return fp
}

const fingerprintTables = `
SELECT format('%I.%I', n.nspname, c.relname), coalesce(ts.spcname, 'default'),
       (SELECT format('%I', a.attname) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype)
         ORDER BY a.attnum LIMIT 1)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_tablespace ts ON ts.oid = c.reltablespace
 WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
 ORDER BY 1`

func fingerprintDB(ctx context.Context, conn *pgx.Conn, db string, skip func(db, table string) bool, fp map[string]string) error {
	type table struct {
		name, spc string
		num       *string
	}
	var tables []table
	rows, err := conn.Query(ctx, fingerprintTables)
	if err != nil {
		return err
	}
	for rows.Next() {
		var tb table
		if err := rows.Scan(&tb.name, &tb.spc, &tb.num); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, tb)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, tb := range tables {
		if skip != nil && skip(db, tb.name) {
			continue
		}
		sum := "0"
		if tb.num != nil {
			sum = "sum(" + *tb.num + ")"
		}
		q := fmt.Sprintf(`SELECT count(*), coalesce(%s, 0)::text,
			coalesce(md5(string_agg(md5(r::text), '' ORDER BY md5(r::text))), '') FROM %s r`, sum, tb.name)
		var count int64
		var total, digest string
		if err := conn.QueryRow(ctx, q).Scan(&count, &total, &digest); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		fp[db+"/"+tb.name] = fmt.Sprintf("tablespace=%s rows=%d sum=%s md5=%s", tb.spc, count, total, digest)
	}
	return nil
}

// FingerprintDiff lists the differences between two fingerprints, one line
// per table ("" when they are equal).
func FingerprintDiff(want, got map[string]string) string {
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		w, inWant := want[k]
		g, inGot := got[k]
		switch {
		case !inGot:
			fmt.Fprintf(&b, "%s: missing (want %s)\n", k, w)
		case !inWant:
			fmt.Fprintf(&b, "%s: unexpected (%s)\n", k, g)
		case w != g:
			fmt.Fprintf(&b, "%s: %s, want %s\n", k, g, w)
		}
	}
	return b.String()
}
