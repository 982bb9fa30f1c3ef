package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// output is where a command reports: text for people, or with --json one
// JSON document on stdout for scripts. Errors always go to stderr as well.
type output struct {
	json    bool
	w, errw io.Writer
	printed bool // a JSON document was written
}

func (o *output) printf(format string, args ...any) { fmt.Fprintf(o.w, format, args...) }

func (o *output) printJSON(v any) {
	enc := json.NewEncoder(o.w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
	o.printed = true
}

// fail reports err on stderr and, with --json, as {"error": …} on stdout
// unless the command's document is already there (and says it).
func (o *output) fail(err error) {
	fmt.Fprintln(o.errw, err)
	var r interface{ reported() bool }
	if o.json && !o.printed && !(errors.As(err, &r) && r.reported()) {
		o.printJSON(map[string]string{"error": err.Error()})
	}
}

type table struct{ tw *tabwriter.Writer }

func (o *output) table(cols ...string) *table {
	t := &table{tabwriter.NewWriter(o.w, 0, 0, 2, ' ', 0)}
	t.row(cols...)
	return t
}

func (t *table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }
func (t *table) flush()              { t.tw.Flush() }
