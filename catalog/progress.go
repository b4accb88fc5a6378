package catalog

// Progress is told how a long workflow (a backup, a restore) advances.
// Workflows never print; cmd renders it as a bar on a terminal or as log
// lines.
type Progress interface {
	// Start gives the number of bytes the workflow will move.
	Start(total int64)
	// Add reports n more bytes moved.
	Add(n int64)
	// Stage names what the workflow does now, e.g. "waiting for WAL".
	Stage(name string)
	// Done ends the display.
	Done()
}

// NoProgress is a Progress that shows nothing.
type NoProgress struct{}

func (NoProgress) Start(int64)  {}
func (NoProgress) Add(int64)    {}
func (NoProgress) Stage(string) {}
func (NoProgress) Done()        {}
