package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress renders a workflow's progress: a bar with bytes, rate and ETA
// on a terminal, a log line every interval otherwise, nothing with
// --quiet.
type progress struct {
	mu       sync.Mutex
	bar      *progressbar.ProgressBar
	log      *slog.Logger
	what     string
	total    int64
	done     int64
	began    time.Time
	last     time.Time
	interval time.Duration
	w        io.Writer
	tty      bool
	quiet    bool
}

// newProgress returns the renderer for a command's progress on stderr.
func (st *state) newProgress(what string) *progress {
	p := &progress{log: st.log, what: what, interval: 10 * time.Second, w: st.stderr, quiet: st.quiet}
	if f, ok := st.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *progress) Start(total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total, p.began, p.last = total, time.Now(), time.Now()
	if p.quiet || !p.tty {
		return
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(p.what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionClearOnFinish(),
	)
}

func (p *progress) Add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.bar != nil {
		_ = p.bar.Add64(n)
		return
	}
	if p.quiet || time.Since(p.last) < p.interval {
		return
	}
	p.last = time.Now()
	secs := time.Since(p.began).Seconds()
	rate := float64(p.done) / secs
	attrs := []any{"done", humanSize(p.done), "total", humanSize(p.total), "rate", humanSize(int64(rate)) + "/s"}
	if rate > 0 && p.total > p.done {
		attrs = append(attrs, "eta", (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second))
	}
	if p.total > 0 {
		attrs = append(attrs, "percent", fmt.Sprintf("%.0f", 100*float64(p.done)/float64(p.total)))
	}
	p.log.Info(p.what, attrs...)
}

func (p *progress) Stage(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Describe(p.what + ": " + name)
	}
}

func (p *progress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}
