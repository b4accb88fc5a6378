package main

import (
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
)

// keygenCommand writes a new age key pair: the private key (the identity,
// for the hosts that restore) to a file created 0600, and prints the
// public key (a recipient, for every host's encryption_recipients).
func keygenCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "write a new encryption key pair: the private key to FILE (mode 0600), the public key to standard output",
		ArgsUsage: "--output FILE (or FILE)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "the `FILE` to write the private key to; it must not exist"},
		},
		Action: func(c *cli.Context) error {
			path := c.String("output")
			switch {
			case c.NArg() == 1 && path == "":
				path = c.Args().First()
			case c.NArg() > 0:
				return usagef("keygen takes one file: the private key's, as --output FILE or FILE")
			}
			if path == "" {
				return usagef("keygen needs --output FILE, the file to write the private key to (created with mode 0600)")
			}
			pub, err := catalog.NewIdentityFile(path, time.Now().UTC().Format(time.RFC3339))
			if errors.Is(err, fs.ErrExist) {
				return usagef("keygen --output %s: the file exists; keygen never replaces a key, name a new file", path)
			}
			if err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			if st.format == "json" {
				return st.printJSON(map[string]string{"public_key": pub, "identity_file": path})
			}
			fmt.Fprintf(st.stderr, "Private key written to %s (keep it off the database host: restore, verify and wal-fetch need it).\n", path)
			fmt.Fprintf(st.stdout, "Public key: %s\n", pub)
			return nil
		},
	}
}
