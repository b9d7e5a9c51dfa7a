// Command nfsd-cache serves a directory over NFSv3, and hosts the
// project's other tools as subcommands.
//
// Each subcommand lives in its own file and adds one line to commands.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one subcommand: run gets the arguments after its name.
type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands is the subcommand table. Add a subcommand with one line here
// and a file defining its run function.
func commands() map[string]command {
	return map[string]command{
		"serve": {"serve a directory (or an in-memory export) over NFSv3", runServe},
		"bench": {"measure serve, proxy, stock go-nfs and nfs-ganesha side by side", runBench},
		"proxy": {"re-export an upstream NFS server through a local cache", runProxy},
		"stats": {"print a running proxy's metrics in /proc/fs/fscache/stats layout", runStats},
	}
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(cmds, stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "nfsd-cache: unknown command %q\n\n", args[0])
		usage(cmds, stderr)
		return 2
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(cmds map[string]command, w io.Writer) {
	fmt.Fprintln(w, "nfsd-cache: an NFSv3 server with a local data cache")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: nfsd-cache <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'nfsd-cache <command> --help' for a command's flags.")
}

// parseCommand gives fl a --help text (the usage lines, then "Flags:" and
// the defaults), parses args and refuses stray arguments. When done is true
// the subcommand returns code at once: 0 after --help, 2 for bad input.
func parseCommand(fl *flag.FlagSet, args []string, stderr io.Writer, usage ...string) (code int, done bool) {
	fl.Usage = func() {
		for _, line := range usage {
			fmt.Fprintln(stderr, line)
		}
		fmt.Fprintln(stderr, "Flags:")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, true
		}
		return 2, true
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fl.Name(), fl.Arg(0))
		return 2, true
	}
	return 0, false
}
