package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func listServersCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:  "list-servers",
		Usage: "list the servers in the configuration, with description and active flag",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("list-servers takes no arguments")
			}
			cfg, err := st.config(c)
			if err != nil {
				return err
			}
			type item struct {
				Name        string `json:"name"`
				Description string `json:"description"`
				Active      bool   `json:"active"`
				Repository  string `json:"repository"`
			}
			items := []item{}
			for _, s := range cfg.Servers() {
				items = append(items, item{s.Name, s.Description, s.Active, s.Show("repository")})
			}
			if st.format == "json" {
				return st.printJSON(items)
			}
			for _, it := range items {
				line := it.Name
				if it.Description != "" {
					line += " - " + it.Description
				}
				if !it.Active {
					line += " (inactive)"
				}
				fmt.Fprintln(st.stdout, line)
			}
			return nil
		},
	}
}

func showServerCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "show-server",
		Usage:     "show the effective settings of one server, secrets redacted",
		ArgsUsage: "SERVER",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("show-server takes exactly one SERVER argument")
			}
			srv, err := st.server(c)
			if err != nil {
				return err
			}
			settings := srv.Settings()
			if st.format == "json" {
				out := map[string]any{"name": srv.Name}
				sources := map[string]string{}
				for _, s := range settings {
					out[s.Name] = s.Value
					sources[s.Name] = s.Source
				}
				out["sources"] = sources
				return st.printJSON(out)
			}
			fmt.Fprintf(st.stdout, "Server %s:\n", srv.Name)
			for _, s := range settings {
				fmt.Fprintf(st.stdout, "\t%s: %s\n", s.Name, s.Value)
			}
			return nil
		},
	}
}
