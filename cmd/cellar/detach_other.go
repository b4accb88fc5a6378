//go:build !unix

package main

import "github.com/urfave/cli/v2"

func (st *state) detachPrefetch(*cli.Context, string, string) func([]string) (int, error) { return nil }
