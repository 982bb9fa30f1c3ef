// Package dtxpgx lets dtx's named (two-phase) transactions run on
// PostgreSQL through pgx (github.com/jackc/pgx/v5/stdlib) at full speed. It
// lives in a module of its own so that dtx itself does not depend on pgx.
//
// Importing it registers the database/sql driver "dtx+pgx":
//
//	import _ "github.com/dtx-go/dtx/pgx"
//
//	db, err := sql.Open("dtx+pgx", "postgres://postgres@127.0.0.1:5432/test")
//
// or, from a pgx.ConnConfig (a custom dialer, a tracer):
//
//	db := dtxpgx.OpenDB(*cfg)
//
// What it adds to dtx.NewConnector over pgx's own connector is CommandTag:
// dtx must see the command tag of PREPARE TRANSACTION (PostgreSQL answers
// ROLLBACK, without an error, in a transaction where a statement failed),
// and pgx's database/sql results carry none. CommandTag reads it from
// pgconn, sending the statement in the simple protocol: no extra round trip,
// and no server-side prepared statement left in pgx's statement cache for
// each distinct name. It also adds BackendPID, with which phase two of a
// name whose prepare's outcome is unknown ends that backend first (see
// dtx.WithBackendPID).
package dtxpgx

import (
	"context"
	"database/sql"
	"database/sql/driver"

	"github.com/dtx-go/dtx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

func init() {
	dtx.Register("dtx+pgx", stdlib.GetDefaultDriver(), dtx.Postgres, CommandTag, BackendPID)
}

// CommandTag is the dtx option that reads command tags from pgx
// connections; see dtx.WithCommandTag. Pass it to dtx.NewConnector or
// dtx.Register along with a pgx stdlib connector or driver.
var CommandTag = dtx.WithCommandTag(commandTag)

// BackendPID is the dtx option that reads a pgx connection's backend pid;
// see dtx.WithBackendPID. With it, phase two of a name whose prepare's
// outcome is unknown ends that backend first.
var BackendPID = dtx.WithBackendPID(backendPID)

// backendPID is the backend pid of a pgx stdlib connection, from the
// server's BackendKeyData; false for any other connection.
func backendPID(parent driver.Conn) (uint32, bool) {
	c, ok := parent.(*stdlib.Conn)
	if !ok {
		return 0, false
	}
	return c.Conn().PgConn().PID(), true
}

// commandTag runs query, which has no arguments, on a pgx stdlib
// connection in the simple protocol and returns its command tag; for any
// other connection it returns driver.ErrSkip.
func commandTag(ctx context.Context, parent driver.Conn, query string) (string, error) {
	c, ok := parent.(*stdlib.Conn)
	if !ok {
		return "", driver.ErrSkip
	}
	if c.Conn().IsClosed() {
		return "", driver.ErrBadConn
	}
	rs, err := c.Conn().PgConn().Exec(ctx, query).ReadAll()
	if err != nil {
		return "", err
	}
	if len(rs) == 0 {
		return "", nil
	}
	return rs[len(rs)-1].CommandTag.String(), nil
}

// NewConnector wraps pgx's stdlib connector for cfg in dtx, with
// CommandTag and BackendPID; opts are dtx's options.
func NewConnector(cfg pgx.ConnConfig, opts ...dtx.Option) driver.Connector {
	return dtx.NewConnector(stdlib.GetConnector(cfg), dtx.Postgres, append([]dtx.Option{CommandTag, BackendPID}, opts...)...)
}

// OpenDB opens a dtx database over pgx for cfg: sql.OpenDB(NewConnector(cfg, opts...)).
func OpenDB(cfg pgx.ConnConfig, opts ...dtx.Option) *sql.DB {
	return sql.OpenDB(NewConnector(cfg, opts...))
}
