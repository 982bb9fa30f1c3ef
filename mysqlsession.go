package dtx

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

// A MariaDB/MySQL session that held a prepared branch still carries the
// state its user gave it: SET SESSION values, user variables, temporary
// tables, GET_LOCK locks. Before it serves anyone else dtx resets it with
// COM_RESET_CONNECTION, which go-sql-driver/mysql (v1.10) never sends: its
// ResetSession only checks that the socket is alive. So the dtx+mysql
// driver builds its parent connector from the DSN with a dial function that
// records each session's socket, and writes that command on the socket
// itself while the session is idle and owned by dtx alone. The server keeps
// the handshake's character set and collation across the reset; what the
// driver set by statement at connect (charset=, system variables in the DSN)
// is sent again, as COM_QUERY packets right behind it. The answers are read
// when the session is taken again (sessions.finishReset).
//
// COM_RESET_CONNECTION is sent only after XA COMMIT or XA ROLLBACK succeeded
// on the session: right after XA PREPARE it detaches the branch and can
// orphan it (see docs/two-phase.md).

// netSlot receives the socket the dial function opens for one Connect, and
// the server thread id its greeting gave.
type netSlot struct {
	nc     net.Conn
	thread uint32
}

type netSlotKey struct{}

// mysqlGreeted reports whether dtx can dial the sessions of cfg itself and
// read each one's greeting, for its thread id: TCP or unix sockets, TLS and
// compression included (the greeting comes before either starts), without a
// dial function of the caller's (a network registered with
// mysql.RegisterDialContext is dialed by the driver).
func mysqlGreeted(cfg *mysql.Config) bool {
	switch cfg.Net {
	case "tcp", "tcp4", "tcp6", "unix":
		return cfg.DialFunc == nil
	}
	return false
}

// mysqlResettable reports whether greeted sessions of cfg can also be reset
// by dtx, which writes on their socket: neither TLS nor compression. Others
// are closed after their held branch instead.
func mysqlResettable(cfg *mysql.Config) bool {
	return cfg.TLS == nil && !strings.Contains(cfg.FormatDSN(), "compress=true")
}

// mysqlConnector is the dtx+mysql driver's parent connector for dsn, the
// reset for its sessions, nil when they cannot be reset, and whether its
// sessions are greeted (their thread ids known, through netSlot).
func mysqlConnector(dsn string) (pc driver.Connector, reset *sessionReset, greeted bool, err error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, nil, false, err
	}
	if !mysqlGreeted(cfg) {
		pc, err := mysql.NewConnector(cfg)
		return pc, nil, false, err
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		slot, ok := ctx.Value(netSlotKey{}).(*netSlot)
		if !ok || err != nil {
			return nc, err
		}
		g, err := readGreeting(ctx, nc)
		if err != nil {
			nc.Close()
			return nil, err
		}
		slot.nc, slot.thread = g, g.thread
		return g, nil
	}
	if pc, err = mysql.NewConnector(cfg); err != nil || !mysqlResettable(cfg) {
		return pc, nil, err == nil, err
	}
	replay := mysqlReplay(dsn, cfg)
	cmds, n := resetCommands(replay), len(replay)+1
	return pc, &sessionReset{
		start:  func(nc net.Conn) error { return writeAll(nc, cmds) },
		finish: func(ctx context.Context, nc net.Conn) error { return readAnswers(ctx, nc, n) },
	}, true, nil
}

// mysqlReplay is what the driver sets by statement when it connects and a
// reset undoes: SET NAMES for a charset= parameter, SET for system
// variables given in the DSN.
func mysqlReplay(dsn string, cfg *mysql.Config) []string {
	var out []string
	if i := strings.LastIndexByte(dsn, '?'); i >= 0 {
		if q, err := url.ParseQuery(dsn[i+1:]); err == nil && q.Get("charset") != "" {
			cs := strings.Split(q.Get("charset"), ",")[0]
			s := "SET NAMES " + cs
			if cfg.Collation != "" && q.Get("collation") != "" {
				s += " COLLATE " + cfg.Collation
			}
			out = append(out, s)
		}
	}
	if len(cfg.Params) > 0 {
		keys := make([]string, 0, len(cfg.Params))
		for k := range cfg.Params {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(k + " = " + cfg.Params[k])
		}
		out = append(out, "SET "+b.String())
	}
	return out
}

// resetCommands is COM_RESET_CONNECTION (0x1f) followed by a COM_QUERY
// (0x03) for each of replay, as packets ready to be written back to back:
// the server answers each in order, with one OK or ERR packet.
func resetCommands(replay []string) []byte {
	b := []byte{1, 0, 0, 0, 0x1f}
	for _, q := range replay {
		n := len(q) + 1
		b = append(b, byte(n), byte(n>>8), byte(n>>16), 0, 0x03)
		b = append(b, q...)
	}
	return b
}

// writeAll writes the reset's commands on nc. The driver is not using nc
// meanwhile: the session is idle and serves no conn; its socket buffer
// takes the few bytes at once.
func writeAll(nc net.Conn, cmds []byte) error {
	if err := nc.SetWriteDeadline(time.Now().Add(resetTimeout)); err != nil {
		return err
	}
	defer nc.SetWriteDeadline(time.Time{})
	if _, err := nc.Write(cmds); err != nil {
		return fmt.Errorf("dtx: COM_RESET_CONNECTION: %w", err)
	}
	return nil
}

// readAnswers reads n answers (OK or ERR packets) from nc, before the driver
// uses the session again, and returns the first ERR as a *mysql.MySQLError.
func readAnswers(ctx context.Context, nc net.Conn, n int) error {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(resetTimeout)
	}
	if err := nc.SetReadDeadline(dl); err != nil {
		return err
	}
	defer nc.SetReadDeadline(time.Time{})
	var first error
	for range n {
		if err := readAnswer(nc); err != nil {
			var me *mysql.MySQLError
			if !errors.As(err, &me) {
				return err // the stream is lost: nothing more can be read
			}
			if first == nil {
				first = err
			}
		}
	}
	return first
}

// readAnswer reads one OK or ERR packet.
func readAnswer(nc net.Conn) error {
	b, err := readPacket(nc)
	if err != nil {
		return fmt.Errorf("dtx: COM_RESET_CONNECTION: %w", err)
	}
	p := b[4:]
	switch {
	case p[0] == 0x00:
		return nil
	case p[0] == 0xff && len(p) >= 3:
		me := &mysql.MySQLError{Number: binary.LittleEndian.Uint16(p[1:3])}
		msg := p[3:]
		if len(msg) >= 6 && msg[0] == '#' {
			copy(me.SQLState[:], msg[1:6])
			msg = msg[6:]
		}
		me.Message = string(msg)
		return fmt.Errorf("dtx: COM_RESET_CONNECTION: %w", me)
	}
	return fmt.Errorf("dtx: COM_RESET_CONNECTION: %w", errUnexpected)
}

// greetedConn is a session's socket whose greeting dtx read first, to learn
// the server's thread id; the driver reads the greeting from it as it would
// from the socket. It is a syscall.Conn like the socket, so the driver's
// liveness check still works; TCP keepalive is net.Dialer's default.
type greetedConn struct {
	net.Conn
	pending []byte // the greeting, until the driver has read it
	thread  uint32
}

// Read implements net.Conn: the greeting first, then the socket.
func (g *greetedConn) Read(b []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(b, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(b)
}

// SyscallConn implements syscall.Conn with the socket's.
func (g *greetedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := g.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// readGreeting reads the server's first packet from nc. A protocol 10
// greeting gives the thread id after the server version; anything else (an
// ERR packet: too many connections) is left for the driver to read and
// report, with thread 0.
func readGreeting(ctx context.Context, nc net.Conn) (*greetedConn, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(resetTimeout)
	}
	if err := nc.SetReadDeadline(dl); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { nc.SetReadDeadline(time.Unix(1, 0)) })
	b, err := readPacket(nc)
	if !stop() {
		return nil, ctx.Err() // the cancel may set its deadline yet: nc is not to be used
	}
	if err != nil {
		return nil, err
	}
	if err := nc.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	g := &greetedConn{Conn: nc, pending: b}
	p := b[4:]
	if len(p) > 0 && p[0] == 10 {
		if i := bytes.IndexByte(p[1:], 0); i >= 0 && len(p) >= 1+i+1+4 {
			g.thread = binary.LittleEndian.Uint32(p[1+i+1:])
		}
	}
	return g, nil
}

// errUnexpected is a packet dtx does not expect from the server.
var errUnexpected = errors.New("unexpected answer")

// readPacket reads one whole packet, its header included. An empty payload,
// or one over 64 KiB, is none that dtx reads (an OK, an ERR, a greeting):
// errUnexpected, before anything is allocated for it.
func readPacket(r io.Reader) ([]byte, error) {
	h := make([]byte, 4, 128)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, err
	}
	n := int(h[0]) | int(h[1])<<8 | int(h[2])<<16
	if n == 0 || n > 1<<16 {
		return nil, errUnexpected
	}
	b := append(h, make([]byte, n)...)
	_, err := io.ReadFull(r, b[4:])
	return b, err
}
