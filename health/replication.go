package health

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/wal"
)

// Replication is the state of WAL streaming: the clients PostgreSQL
// reports, the replication slot and its lag, and where the repository's
// WAL ends.
type Replication struct {
	Server     string          `json:"server"`
	CurrentLSN string          `json:"current_lsn"`
	Clients    []pg.ReplClient `json:"clients"`
	Slot       pg.SlotState    `json:"slot"`
	Repository struct {
		Timeline    uint32 `json:"timeline"`
		LastSegment string `json:"last_segment"`
		Partial     int    `json:"partial_segments"`
	} `json:"repository"`
}

// ReadReplication reads the streaming clients and the slot from the server
// over conn, and where the server's WAL in the repository ends.
func ReadReplication(ctx context.Context, conn *pgx.Conn, store cloud.Storage, server, slot string) (Replication, error) {
	out := Replication{Server: server, Clients: []pg.ReplClient{}, Slot: pg.SlotState{Name: slot}}
	var err error
	if out.CurrentLSN, err = pg.CurrentLSN(ctx, conn); err != nil {
		return out, err
	}
	if out.Clients, err = pg.ReplClients(ctx, conn); err != nil {
		return out, err
	}
	if out.Slot, err = pg.ReadSlotState(ctx, conn, slot, out.CurrentLSN); err != nil {
		return out, err
	}
	tls, err := wal.ListWAL(ctx, store, server)
	if err != nil {
		return out, err
	}
	if len(tls) > 0 {
		t := tls[len(tls)-1]
		out.Repository.Timeline, out.Repository.LastSegment, out.Repository.Partial = t.Timeline, t.Last, t.Partial
	}
	return out, nil
}
