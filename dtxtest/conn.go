package dtxtest

import (
	"context"
	"database/sql/driver"
	"encoding/hex"
	"strings"
)

// connector opens the sqlmock session of dsn (sqlmock hands the same one to
// every Open of a DSN) and wraps it in a recorder.
type connector struct {
	drv driver.Driver
	dsn string
	m   *Mock
}

// Connect implements driver.Connector.
func (c connector) Connect(context.Context) (driver.Conn, error) {
	s, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	return recorder{Conn: s, m: c.m}, nil
}

// Driver implements driver.Connector: sqlmock's driver.
func (c connector) Driver() driver.Driver { return c.drv }

// recorder forwards every call to sqlmock's session, which has all these
// interfaces, and notes the global names in the statements dtx sends, so
// that the Mock can drop them when the test ends.
type recorder struct {
	driver.Conn
	m *Mock
}

var (
	_ driver.ConnBeginTx        = recorder{}
	_ driver.ConnPrepareContext = recorder{}
	_ driver.ExecerContext      = recorder{}
	_ driver.QueryerContext     = recorder{}
	_ driver.Pinger             = recorder{}
	_ driver.NamedValueChecker  = recorder{}
)

// BeginTx implements driver.ConnBeginTx (an unnamed transaction).
func (r recorder) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return r.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
}

// PrepareContext implements driver.ConnPrepareContext.
func (r recorder) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return r.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
}

// ExecContext implements driver.ExecerContext, noting XA START's name.
func (r recorder) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	r.note(query)
	return r.Conn.(driver.ExecerContext).ExecContext(ctx, query, args)
}

// QueryContext implements driver.QueryerContext, noting PREPARE
// TRANSACTION's name.
func (r recorder) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	r.note(query)
	return r.Conn.(driver.QueryerContext).QueryContext(ctx, query, args)
}

// Ping implements driver.Pinger.
func (r recorder) Ping(ctx context.Context) error { return r.Conn.(driver.Pinger).Ping(ctx) }

// CheckNamedValue implements driver.NamedValueChecker.
func (r recorder) CheckNamedValue(nv *driver.NamedValue) error {
	return r.Conn.(driver.NamedValueChecker).CheckNamedValue(nv)
}

// note records the name a PREPARE TRANSACTION or XA START carries.
func (r recorder) note(query string) {
	if rest, ok := strings.CutPrefix(query, "PREPARE TRANSACTION '"); ok {
		r.m.saw(strings.TrimSuffix(rest, "'"))
	} else if rest, ok := strings.CutPrefix(query, "XA START X'"); ok {
		if b, err := hex.DecodeString(strings.TrimSuffix(rest, "'")); err == nil {
			r.m.saw(string(b))
		}
	}
}
