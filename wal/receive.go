package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/catalog/codec"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/pg"
)

// ReceiveOptions say what to stream where.
type ReceiveOptions struct {
	Store  cloud.Storage
	Server string
	// Conninfo is the replication connection's libpq string.
	Conninfo string
	// Slot is the physical replication slot streamed through.
	Slot string
	// AppName is the application_name the server sees, the name
	// synchronous_standby_names lists to make commits wait for the
	// repository.
	AppName string
	Codec   codec.Codec
	Level   int
	Version string
	// UploadInterval is how often the segment in progress is uploaded as
	// <segment>.partial while no commit waits for it.
	UploadInterval time.Duration
	// SyncInterval, when the server waits for this stream to commit
	// (synchronous_standby_names names AppName), is the least time between
	// two chunks of the segment in progress: commits that arrive within it
	// go up together in the next chunk. 0 starts a chunk as soon as WAL
	// arrives (up to maxChunks at once).
	SyncInterval time.Duration
	// Reset starts from the server's current position instead of where
	// the repository ends.
	Reset bool
	// Log receives progress; nil discards it.
	Log *slog.Logger
	// Started, when set, is called once the first stream runs.
	Started func(Status)
}

// Status says where a stream is.
type Status struct {
	Timeline    uint32
	Start       pg.LSN
	Synchronous bool
}

// statusInterval is how often a status update goes to the server even
// when nothing changed, well within wal_sender_timeout's default 60 s.
const statusInterval = 10 * time.Second

// maxQueued is how many completed segments may wait for their upload
// before the stream stops reading (and the server's send buffer fills).
const maxQueued = 4

// Receive streams WAL from the server into the repository until ctx ends,
// then uploads what it received and returns nil. A failure before the
// first stream runs (the connection, the slot, the repository's identity)
// is returned; later ones are logged and the stream reconnects, waiting
// longer after each failure in a row.
//
// What the server is told is flushed is only ever WAL that is durable in
// the repository: whole segments stored as wal-push stores them, and the
// segment in progress as <segment>.partial and, when commits wait for
// it, chunks.
func Receive(ctx context.Context, o ReceiveOptions) error {
	log := logger(o.Log)
	started := false
	backoff := time.Second
	for {
		began := time.Now()
		err := receiveOnce(ctx, o, log, func(s Status) {
			if !started && o.Started != nil {
				o.Started(s)
			}
			started = true
		})
		if ctx.Err() != nil {
			return nil
		}
		if !started {
			return err
		}
		if time.Since(began) > time.Minute {
			backoff = time.Second
		}
		log.Warn("receive-wal: the stream stopped; reconnecting", "server", o.Server, "error", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
		o.Reset = false
	}
}

// ManageSlot creates the physical replication slot (reserving WAL from
// now on) or, with drop, drops it. It reports whether it changed
// anything: creating an existing physical slot, or dropping a missing
// one, is success without a change.
func ManageSlot(ctx context.Context, conninfo, appName, slot string, drop bool) (changed bool, err error) {
	c, err := pg.DialReplication(ctx, conninfo, appName)
	if err != nil {
		return false, err
	}
	defer c.Close()
	s, err := c.ReadSlot(ctx, slot)
	switch {
	case err != nil:
		return false, err
	case drop && s.Exists:
		return true, c.DropSlot(ctx, slot)
	case drop:
		return false, nil
	case s.Exists && !s.Physical:
		return false, fmt.Errorf("replication slot %q exists but is a logical slot: choose another slot_name", slot)
	case s.Exists:
		return false, nil
	}
	return true, c.CreateSlot(ctx, slot)
}

// receiveOnce runs one connection's streams, across timeline switches.
func receiveOnce(ctx context.Context, o ReceiveOptions, log *slog.Logger, started func(Status)) error {
	conn, err := pg.DialReplication(ctx, o.Conninfo, o.AppName)
	if err != nil {
		return err
	}
	defer conn.Close()
	sys, err := conn.IdentifySystem(ctx)
	if err != nil {
		return err
	}
	segSize, err := conn.SegmentSize(ctx)
	if err != nil {
		return err
	}
	p := &pusher{o: PushOptions{Store: o.Store, Server: o.Server, Version: o.Version}, log: log}
	if err := p.checkIdentity(ctx, pg.SegmentHeader{SystemIdentifier: sys.SystemIdentifier, SegmentSize: segSize}); err != nil {
		return err
	}
	slot, err := conn.ReadSlot(ctx, o.Slot)
	if err != nil {
		return err
	}
	if !slot.Exists {
		return fmt.Errorf("replication slot %q %w on the server of %s", o.Slot, ErrNoSlot, o.Server)
	}
	if !slot.Physical {
		return fmt.Errorf("replication slot %q %w: set slot_name to a physical slot", o.Slot, ErrLogicalSlot)
	}
	ssn, err := conn.Show(ctx, "synchronous_standby_names")
	if err != nil {
		return err
	}
	r := &receiver{o: o, log: log, conn: conn, segSize: segSize, sysid: sys.SystemIdentifier,
		synchronous: NamesStandby(ssn, o.AppName), notify: make(chan struct{}, 1)}
	start, tl, err := r.startPoint(ctx, sys, slot)
	if err != nil {
		return err
	}
	err = conn.StartReplication(ctx, o.Slot, start, tl)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "58P01" && !o.Reset {
		// The server no longer has the WAL where the repository ends:
		// stream from where it has, and leave the gap to archive_command.
		from := max(slot.RestartLSN, sys.Flush).SegmentStart(segSize)
		log.Warn("receive-wal: the server has removed the WAL after the repository's end; streaming from its oldest position, archive_command must fill the gap",
			"server", o.Server, "from", start, "to", from, "error", pe.Message)
		start, tl = from, sys.Timeline
		err = conn.StartReplication(ctx, o.Slot, start, tl)
	}
	if err != nil {
		return fmt.Errorf("START_REPLICATION at %s on timeline %d: %w", start, tl, err)
	}
	started(Status{Timeline: tl, Start: start, Synchronous: r.synchronous})
	log.Info("receive-wal: streaming", "server", o.Server, "timeline", tl, "from", start, "synchronous", r.synchronous)
	return r.run(ctx, start, tl)
}

// NamesStandby reports whether synchronous_standby_names lists name (or
// "*"), in any of its forms: "a, b", "FIRST 1 (a, b)", "ANY 2 (a, b)".
func NamesStandby(ssn, name string) bool {
	f := strings.FieldsFunc(ssn, func(r rune) bool { return r == ',' || r == '(' || r == ')' || r == ' ' || r == '\t' })
	for _, s := range f {
		if s == "*" || (strings.HasPrefix(s, `"`) && strings.Trim(s, `"`) == name) || strings.EqualFold(s, name) {
			return true
		}
	}
	return false
}

// receiver is one connection's stream: this goroutine reads the stream
// into segment buffers; an uploader goroutine stores them and reports
// what is durable.
type receiver struct {
	o           ReceiveOptions
	log         *slog.Logger
	conn        *pg.ReplConn
	segSize     int64
	sysid       uint64
	synchronous bool
	notify      chan struct{}

	mu       sync.Mutex
	cur      *segment   // the segment being received
	queue    []*segment // completed segments waiting for their upload
	barrier  []chan error
	received pg.LSN
	durable  pg.LSN
	stopped  bool
	failed   error // the uploader's error, which ends the stream
	space    *sync.Cond

	chunksInFlight int
	lastReported   pg.LSN // the durable position the server was told
}

// segment is a segment's worth of received WAL.
type segment struct {
	tl    uint32
	segNo uint64
	buf   []byte
	n     int                    // bytes received
	grow  *catalog.GrowingObject // the .partial's encoding
	sent  int                    // bytes in the uploaded .partial
	skip  bool                   // the repository's .partial is PostgreSQL's own: leave it
	floor int                    // the size of an earlier run's .partial: store no less

	// Synchronous streaming stores each batch of commits as a chunk of
	// its own, several at once; the .partial folds them in now and then.
	chunked  int            // bytes handed to chunk uploads
	spans    map[int]int    // stored chunks: start -> end (under receiver.mu)
	durableN int            // bytes durable from the segment's start (under receiver.mu)
	chunks   sync.WaitGroup // chunk uploads in flight
}

func (s *segment) start(segSize int64) pg.LSN { return pg.LSN(s.segNo * uint64(segSize)) }

func (s *segment) name(segSize int64) string { return pg.SegmentNameOf(s.tl, s.segNo, segSize) }

// startPoint is where the stream starts: the end of the last whole
// segment in the repository (on this server's history), or with Reset or
// an empty repository the slot's restart point or the server's position;
// always a segment's start.
func (r *receiver) startPoint(ctx context.Context, sys pg.System, slot pg.Slot) (pg.LSN, uint32, error) {
	var last *pg.WALName
	var partials []pg.WALName
	have := map[string]bool{}
	err := catalog.ListWALFiles(ctx, r.o.Store, r.o.Server, func(w pg.WALName, _ cloud.ObjectInfo) error {
		switch {
		case w.Kind == pg.Partial:
			partials = append(partials, w)
		case w.Kind != pg.Segment || w.Timeline > sys.Timeline:
		case last == nil || w.SegNo(r.segSize) > last.SegNo(r.segSize) ||
			w.SegNo(r.segSize) == last.SegNo(r.segSize) && w.Timeline > last.Timeline:
			w := w
			last = &w
		}
		if w.Kind == pg.Segment {
			have[w.Name] = true
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	// A streamed .partial, or chunks, whose whole segment is archived
	// now are done with.
	for _, w := range partials {
		if have[w.SegmentName()] {
			r.deletePartial(ctx, w.Name)
		}
	}
	r.deleteChunks(ctx, func(seg string) bool { return have[seg] })
	fallback := sys.Flush.SegmentStart(r.segSize)
	if slot.RestartLSN != 0 {
		fallback = slot.RestartLSN.SegmentStart(r.segSize)
	}
	if r.o.Reset || last == nil {
		return fallback, r.timelineAt(ctx, sys, fallback), nil
	}
	end := pg.LSN((last.SegNo(r.segSize) + 1) * uint64(r.segSize))
	if end > sys.Flush {
		// The repository is ahead of this server (restored from it?):
		// stream from the server's own position.
		return sys.Flush.SegmentStart(r.segSize), sys.Timeline, nil
	}
	return end, r.timelineAt(ctx, sys, end), nil
}

// timelineAt is the timeline of the server's history that holds pos.
func (r *receiver) timelineAt(ctx context.Context, sys pg.System, pos pg.LSN) uint32 {
	if sys.Timeline == 1 {
		return 1
	}
	_, content, err := r.conn.TimelineHistory(ctx, sys.Timeline)
	if err != nil {
		return sys.Timeline
	}
	return pg.TimelineAt(pg.ParseHistory(content), sys.Timeline, pos)
}

// run reads the stream from start on timeline tl, following timeline
// switches, until ctx ends or the stream fails.
func (r *receiver) run(ctx context.Context, start pg.LSN, tl uint32) error {
	r.space = sync.NewCond(&r.mu)
	r.received, r.durable = start, start
	r.cur = r.newSegment(tl, start.SegNo(r.segSize))
	upctx, stopUploads := context.WithCancel(context.WithoutCancel(ctx))
	defer stopUploads()
	var wg sync.WaitGroup
	wg.Go(func() { r.uploader(upctx) })
	// Closing the connection is what ends a Receive in progress.
	watch := context.AfterFunc(ctx, r.conn.Interrupt)
	defer watch()
	err := r.read(ctx)
	// Store what was received before returning: on SIGTERM, and on a
	// broken connection too (nothing received is thrown away).
	ferr := r.flush(upctx, 30*time.Second)
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.kick()
	wg.Wait()
	if ctx.Err() != nil {
		if ferr != nil {
			r.log.Error("receive-wal: could not store the last WAL received before stopping", "server", r.o.Server, "error", ferr)
		} else {
			r.log.Info("receive-wal: stopped", "server", r.o.Server, "durable", r.durable)
		}
		return ferr
	}
	return err
}

func (r *receiver) newSegment(tl uint32, segNo uint64) *segment {
	return &segment{tl: tl, segNo: segNo, buf: make([]byte, r.segSize), spans: map[int]int{}}
}

// read receives messages until the stream fails or ctx ends.
func (r *receiver) read(ctx context.Context) error {
	for {
		m, err := r.conn.Receive(context.Background())
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		switch {
		case m.EndOfTimeline:
			if err := r.switchTimeline(ctx, m); err != nil {
				return err
			}
		case m.Data != nil:
			if err := r.add(m.Start, m.Data); err != nil {
				return err
			}
		case m.ReplyRequested:
			if _, err := r.report(true); err != nil {
				return err
			}
		}
	}
}

// add appends WAL that starts at start to the segments.
func (r *receiver) add(start pg.LSN, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed != nil {
		return r.failed
	}
	if start != r.received {
		return fmt.Errorf("the server sent WAL from %s, expected %s", start, r.received)
	}
	for len(data) > 0 {
		c := r.cur
		n := copy(c.buf[c.n:], data)
		c.n += n
		data = data[n:]
		r.received += pg.LSN(n)
		if c.n == len(c.buf) {
			for len(r.queue) >= maxQueued && r.failed == nil {
				r.space.Wait()
			}
			if r.failed != nil {
				return r.failed
			}
			r.queue = append(r.queue, c)
			r.cur = r.newSegment(c.tl, c.segNo+1)
		}
	}
	r.kick()
	return nil
}

// switchTimeline stores everything of the ended timeline (its last
// segment as .partial), archives the new timeline's history file, and
// streams the new timeline from the start of the segment where it forked.
func (r *receiver) switchTimeline(ctx context.Context, m pg.Message) error {
	if err := r.flush(ctx, 0); err != nil {
		return err
	}
	name, content, err := r.conn.TimelineHistory(ctx, m.NextTimeline)
	if err != nil {
		return err
	}
	if err := r.storeHistory(ctx, name, content); err != nil {
		return err
	}
	start := m.NextStart.SegmentStart(r.segSize)
	r.mu.Lock()
	r.cur = r.newSegment(m.NextTimeline, start.SegNo(r.segSize))
	r.received = start // durable stays where it is: positions only grow
	r.mu.Unlock()
	r.log.Info("receive-wal: following a new timeline", "server", r.o.Server, "timeline", m.NextTimeline, "from", start)
	return r.conn.StartReplication(ctx, r.o.Slot, start, m.NextTimeline)
}

// storeHistory archives a timeline history file as wal-push would.
func (r *receiver) storeHistory(ctx context.Context, name string, content []byte) error {
	w, err := pg.ParseWALName(name)
	if err != nil {
		return err
	}
	h, obj, err := catalog.EncodeBytes(catalog.Header{Type: "wal", Name: name, Codec: r.o.Codec}, r.o.Level, content)
	if err != nil {
		return err
	}
	return r.createWAL(ctx, catalog.WALKey(r.o.Server, w), h, obj)
}

// createWAL stores a WAL object with a conditional create; an identical
// object already there (archive_command pushed it) is success.
func (r *receiver) createWAL(ctx context.Context, key string, h catalog.Header, obj []byte) error {
	err := cloud.Create(ctx, r.o.Store, key, bytes.NewReader(obj), int64(len(obj)))
	if errors.Is(err, cloud.ErrExist) {
		var res PushResult
		return sameContent(ctx, r.o.Store, key, h, &res)
	}
	return err
}

// flush waits until everything received is durable in the repository,
// the segment in progress as .partial. A zero limit waits as long as ctx.
func (r *receiver) flush(ctx context.Context, limit time.Duration) error {
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	done := make(chan error, 1)
	r.mu.Lock()
	if r.failed != nil || r.stopped {
		err := r.failed
		r.mu.Unlock()
		if err == nil {
			err = errors.New("the uploader has stopped")
		}
		return err
	}
	r.barrier = append(r.barrier, done)
	r.mu.Unlock()
	r.kick()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *receiver) kick() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// maxChunks is how many chunks of synchronous streaming upload at once.
const maxChunks = 4

// uploader stores completed segments in order and the segment in
// progress: asynchronously as .partial once UploadInterval has passed;
// synchronously (commits wait) as chunks, at once or after SyncInterval,
// folded into the .partial every UploadInterval. A flush asks for all of
// it now. It reports what is durable. After a failure it only answers
// flushes with it, until the stream stops.
func (r *receiver) uploader(ctx context.Context) {
	var lastPartial, lastChunk, lastStatus time.Time
	tick := time.NewTicker(min(time.Second, max(r.o.UploadInterval, 100*time.Millisecond)))
	defer tick.Stop()
	for {
		select {
		case <-r.notify:
		case <-tick.C:
		case <-ctx.Done():
		}
		r.mu.Lock()
		queue, barrier := r.queue, r.barrier
		r.queue, r.barrier = nil, nil
		stopped, failed := r.stopped, r.failed
		cur, curN := r.cur, r.cur.n
		r.mu.Unlock()
		if failed == nil {
			failed = func() error {
				for _, s := range queue {
					if err := r.storeSegment(ctx, s); err != nil {
						return err
					}
					r.markDurable(s, len(s.buf))
				}
				if len(queue) > 0 {
					r.markDurable(cur, 0) // its chunks may have waited for these
				}
				if r.synchronous && curN > cur.chunked && r.inflight() < maxChunks {
					if wait := time.Until(lastChunk.Add(r.o.SyncInterval)); wait > 0 && len(barrier) == 0 {
						// Let more commits join this chunk.
						time.Sleep(wait)
						r.mu.Lock()
						curN = cur.n
						r.mu.Unlock()
					}
					r.startChunk(ctx, cur, curN)
					lastChunk = time.Now()
				}
				if curN > cur.sent && (len(barrier) > 0 || time.Since(lastPartial) >= r.o.UploadInterval) {
					cur.chunks.Wait()
					if err := r.failure(); err != nil {
						return err
					}
					stored, err := r.storePartial(ctx, cur, curN)
					if err != nil {
						return err
					}
					lastPartial = time.Now()
					if stored {
						r.markDurable(cur, curN)
						r.pruneChunks(ctx, cur, curN)
					}
				}
				return nil
			}()
			if failed != nil {
				r.fail(failed)
			}
		}
		for _, b := range barrier {
			b <- failed
		}
		r.mu.Lock()
		r.space.Broadcast()
		r.mu.Unlock()
		if failed == nil {
			if sent, _ := r.report(time.Since(lastStatus) > statusInterval); sent {
				lastStatus = time.Now()
			}
		}
		if stopped {
			return
		}
	}
}

// fail records the first failure of the uploads and ends the stream.
func (r *receiver) fail(err error) {
	r.mu.Lock()
	first := r.failed == nil
	if first {
		r.failed = err
	}
	r.space.Broadcast()
	r.mu.Unlock()
	if first {
		r.log.Error("receive-wal: storing WAL failed", "server", r.o.Server, "error", err)
		r.conn.Interrupt() // ends the reader
	}
}

func (r *receiver) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *receiver) inflight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.chunksInFlight
}

// report tells the server what is received and what is durable: with
// force always, otherwise when the durable position moved since it was
// last told. It says whether it sent.
func (r *receiver) report(force bool) (bool, error) {
	r.mu.Lock()
	w, d, told := r.received, r.durable, r.lastReported
	r.mu.Unlock()
	if !force && d <= told {
		return false, nil
	}
	if err := r.conn.SendStatus(max(w, d), d, false); err != nil {
		return false, err
	}
	r.mu.Lock()
	r.lastReported = max(r.lastReported, d)
	r.mu.Unlock()
	return true, nil
}

// markDurable records that the first n bytes of s are in the repository
// and moves the durable position on, as far as it is contiguous from
// the stream's start.
func (r *receiver) markDurable(s *segment, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.durableN = max(s.durableN, n)
	for moved := true; moved; {
		moved = false
		for from, to := range s.spans {
			if from <= s.durableN && to > s.durableN {
				s.durableN, moved = to, true
			}
		}
	}
	if start := s.start(r.segSize); r.durable >= start {
		r.durable = max(r.durable, start+pg.LSN(s.durableN))
	}
}

// startChunk uploads the bytes of s from what earlier chunks took up to
// n as a chunk of their own; once stored they count as durable (with
// everything before them) and the server hears of it at once.
func (r *receiver) startChunk(ctx context.Context, s *segment, n int) {
	from := s.chunked
	s.chunked = n
	r.mu.Lock()
	r.chunksInFlight++
	r.mu.Unlock()
	s.chunks.Add(1)
	go func() {
		defer s.chunks.Done()
		err := r.storeChunk(ctx, s, from, n)
		r.mu.Lock()
		r.chunksInFlight--
		if err == nil {
			s.spans[from] = n
		}
		r.mu.Unlock()
		if err != nil {
			r.fail(err)
			return
		}
		r.markDurable(s, 0)
		_, _ = r.report(false) // a failure shows in the reader
		r.kick()
	}()
}

// storeChunk stores bytes from..to of s as a streamed chunk.
func (r *receiver) storeChunk(ctx context.Context, s *segment, from, to int) error {
	name := s.name(r.segSize)
	h := catalog.Header{Type: "wal-chunk", Name: name, Offset: int64(from), Codec: r.o.Codec, SystemIdentifier: r.sysid}
	_, obj, err := catalog.EncodeBytes(h, r.o.Level, s.buf[from:to])
	if err != nil {
		return err
	}
	key := catalog.ChunkKey(r.o.Server, name, int64(from), int64(to))
	if err := r.o.Store.Put(ctx, key, bytes.NewReader(obj), int64(len(obj))); err != nil {
		return fmt.Errorf("uploading %s: %w", key, err)
	}
	return nil
}

// pruneChunks removes the chunks of s that its .partial of n bytes holds.
func (r *receiver) pruneChunks(ctx context.Context, s *segment, n int) {
	name := s.name(r.segSize)
	r.mu.Lock()
	var gone []string
	for from, to := range s.spans {
		if to <= n {
			gone = append(gone, catalog.ChunkKey(r.o.Server, name, int64(from), int64(to)))
			delete(s.spans, from)
		}
	}
	r.mu.Unlock()
	if err := cloud.DeleteAll(ctx, r.o.Store, gone); err != nil {
		r.log.Warn("receive-wal: could not remove streamed chunks that the .partial holds", "wal", name, "error", err)
	}
}

// storeSegment stores a completed segment as wal-push does; then its
// streamed .partial is of no more use.
func (r *receiver) storeSegment(ctx context.Context, s *segment) error {
	name := s.name(r.segSize)
	w, err := pg.ParseWALName(name)
	if err != nil {
		return err
	}
	sh, err := pg.ReadSegmentHeader(bytes.NewReader(s.buf))
	if err == nil {
		err = sh.Check(w)
	}
	if err != nil {
		return fmt.Errorf("streamed segment %s: %w", name, err)
	}
	h, obj, err := catalog.EncodeBytes(catalog.Header{Type: "wal", Name: name, Codec: r.o.Codec, SystemIdentifier: r.sysid}, r.o.Level, s.buf)
	if err != nil {
		return err
	}
	if err := r.createWAL(ctx, catalog.WALKey(r.o.Server, w), h, obj); err != nil {
		return fmt.Errorf("storing streamed segment %s: %w", name, err)
	}
	if s.sent > 0 {
		r.deletePartial(ctx, name+".partial")
	}
	s.chunks.Wait()
	if s.chunked > 0 {
		r.deleteChunks(ctx, func(seg string) bool { return seg == name })
	}
	r.log.Debug("receive-wal: segment stored", "wal", name)
	return nil
}

// storePartial uploads the first n bytes of the segment in progress as
// <segment>.partial, replacing the previous upload. A .partial that
// PostgreSQL archived itself (at a promotion) is never replaced.
func (r *receiver) storePartial(ctx context.Context, s *segment, n int) (stored bool, err error) {
	if s.skip || n < s.floor {
		return false, nil
	}
	name := s.name(r.segSize) + ".partial"
	w, err := pg.ParseWALName(name)
	if err != nil {
		return false, err
	}
	key := catalog.WALKey(r.o.Server, w)
	if s.grow == nil {
		old, err := archivedHeader(ctx, r.o.Store, key, name)
		if err != nil {
			return false, err
		}
		if old != nil && !old.Streamed {
			s.skip = true
			return false, nil
		}
		if old != nil && int(old.Size) > n {
			// An earlier run stored more of this segment: never replace
			// it with less (what it holds was reported durable).
			s.floor = int(old.Size)
			return false, nil
		}
		s.grow = catalog.NewGrowingObject(catalog.Header{Type: "wal", Name: name, Codec: r.o.Codec, Streamed: true, SystemIdentifier: r.sysid}, r.o.Level)
	}
	obj, _, err := s.grow.Object(s.buf[:n])
	if err != nil {
		return false, err
	}
	start := time.Now()
	if err := r.o.Store.Put(ctx, key, bytes.NewReader(obj), int64(len(obj))); err != nil {
		return false, fmt.Errorf("uploading %s: %w", name, err)
	}
	r.log.Debug("receive-wal: partial segment stored", "wal", name, "bytes", n, "stored", len(obj), "seconds", time.Since(start).Seconds())
	s.sent = n
	return true, nil
}

// deleteChunks removes the streamed chunks of the segments stale names.
func (r *receiver) deleteChunks(ctx context.Context, stale func(segment string) bool) {
	if err := catalog.DeleteChunks(ctx, r.o.Store, r.o.Server, stale); err != nil {
		r.log.Warn("receive-wal: could not remove streamed chunks of stored segments", "error", err)
	}
}

// deletePartial removes a streamed .partial (never one PostgreSQL archived).
func (r *receiver) deletePartial(ctx context.Context, name string) {
	w, err := pg.ParseWALName(name)
	if err != nil {
		return
	}
	key := catalog.WALKey(r.o.Server, w)
	if h, err := archivedHeader(ctx, r.o.Store, key, name); err == nil && h != nil && h.Streamed {
		if err := r.o.Store.Delete(ctx, key); err != nil && !errors.Is(err, cloud.ErrNotExist) {
			r.log.Warn("receive-wal: could not remove a streamed .partial whose segment is stored", "key", key, "error", err)
		}
	}
}
