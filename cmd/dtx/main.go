// Command dtx looks at and finishes the prepared (in-doubt) transactions dtx
// leaves on PostgreSQL and MariaDB/MySQL: list them with their ages and
// their globals' decisions, show one global, commit or roll back one branch
// through dtx's own finish path, and run a Coordinator's recovery pass. See
// docs/operations.md.
//
//	dtx list     [--older-than DUR] [--node NODE]
//	dtx show     NAME|GLOBAL
//	dtx commit   NAME [--force]
//	dtx rollback NAME [--force]
//	dtx recover  [--node NODE] [--abandon-age DUR]
//
// Every command takes --db name=driver:DSN (repeated; or DTX_DB_<NAME>),
// --store, --json and --timeout. Exit status: 0 ok, 1 error, 2 usage, 3
// something is in doubt (list found prepared transactions; recover left
// branches waiting or decisions unresolved).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	exitOK      = 0
	exitError   = 1
	exitUsage   = 2
	exitInDoubt = 3
)

const usage = `usage: dtx <command> [flags]

commands:
  list     [--older-than DUR] [--node NODE]   every prepared (in-doubt) transaction
  show     NAME|GLOBAL                        a global's branches and its decision record
  commit   NAME [--force]                     commit one prepared transaction
  rollback NAME [--force]                     roll back one prepared transaction
  recover  [--node NODE] [--abandon-age DUR]  one Coordinator recovery pass

flags of every command:
  --db name=driver:DSN   a database (driver postgres or mysql), repeated;
                         or DTX_DB_<NAME>=driver:DSN in the environment
  --store SPEC           where the Coordinator's outcomes are:
                         resource:<db>[:table]  the decision table in a --db (default dtx_decisions)
                         file:<dir>             a FileLog directory
                         sql:<driver:DSN>[#table]  a table in another database
  --json                 one JSON document on stdout
  --timeout DUR          bound for the whole command (default 2m)

exit status: 0 ok, 1 error, 2 usage, 3 something is in doubt
`

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf("dtx: "+format, args...)}
}

// errInDoubt makes a command that succeeded exit with status 3.
var errInDoubt = errors.New("dtx: in doubt")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the flags every command shares, and the ones some take.
type options struct {
	dbs        []dbSpec
	store      string
	json       bool
	timeout    time.Duration
	olderThan  time.Duration
	node       string
	force      bool
	abandonAge time.Duration
	args       []string // positional arguments
}

func run(ctx context.Context, args, env []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	commands := map[string]func(context.Context, *options, *output) error{
		"list": cmdList, "show": cmdShow, "commit": cmdCommit, "rollback": cmdRollback, "recover": cmdRecover,
	}
	f, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "dtx: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	o, err := parseFlags(cmd, rest, env, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	out := &output{json: o != nil && o.json, w: stdout, errw: stderr}
	if err == nil {
		if o.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, o.timeout)
			defer cancel()
		}
		err = f(ctx, o, out)
	}
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errInDoubt):
		return exitInDoubt
	case errors.As(err, &ue):
		out.fail(err)
		fmt.Fprintf(stderr, "run dtx help for the commands and flags\n")
		return exitUsage
	}
	out.fail(err)
	return exitError
}

// parseFlags parses one command's flags. Flags may come before or after the
// positional arguments (dtx commit NAME --db …): the flag package stops at
// the first non-flag, so parsing resumes after each one.
func parseFlags(cmd string, args, env []string, stderr io.Writer) (*options, error) {
	o := &options{timeout: 2 * time.Minute}
	fs := flag.NewFlagSet("dtx "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Func("db", "a database: name=driver:DSN (driver postgres or mysql); repeated", func(v string) error {
		d, err := parseDB(v)
		if err != nil {
			return err
		}
		o.dbs = append(o.dbs, d)
		return nil
	})
	fs.StringVar(&o.store, "store", "", "the decision store: resource:<db>[:table], file:<dir> or sql:<driver:DSN>[#table]")
	fs.BoolVar(&o.json, "json", false, "print one JSON document on stdout")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "bound for the whole command")
	npos := 0
	switch cmd {
	case "list":
		fs.DurationVar(&o.olderThan, "older-than", 0, "only transactions at least this old (those of unknown age are always listed)")
		fs.StringVar(&o.node, "node", "", "only Coordinator branches of this node")
	case "show":
		npos = 1
	case "commit", "rollback":
		npos = 1
		fs.BoolVar(&o.force, "force", false, "act even against the global's recorded outcome; recorded as a heuristic")
	case "recover":
		fs.StringVar(&o.node, "node", "", "the node id of this recovery's Coordinator (default: a FileLog's own, else a random cli-…)")
		fs.DurationVar(&o.abandonAge, "abandon-age", 0, "how old another node's global must be before this pass finishes it (default 2m)")
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{"dtx: " + err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		o.args = append(o.args, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(o.args) != npos {
		switch npos {
		case 0:
			return o, usagef("%s takes no arguments, got %q", cmd, strings.Join(o.args, " "))
		default:
			return o, usagef("%s takes one argument (a name), got %d", cmd, len(o.args))
		}
	}
	fromEnv, err := envDBs(env)
	if err != nil {
		return o, err
	}
	o.dbs = mergeDBs(o.dbs, fromEnv)
	if len(o.dbs) == 0 {
		return o, usagef("no databases: give --db name=driver:DSN or set DTX_DB_<NAME>=driver:DSN")
	}
	return o, nil
}
