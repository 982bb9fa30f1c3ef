package faults

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Servers are a run's own PostgreSQL and MariaDB instances, in a temporary
// directory, on ports of their own: the nemesis crashes and restarts them,
// which it must never do to servers anyone else uses. PostgreSQL runs as
// the postgres user when the harness runs as root (initdb refuses root).
type Servers struct {
	Dir            string
	PGPort, MyPort int
	// Startup is what creating and starting both took.
	Startup time.Duration

	pgBin   string // the directory of initdb, pg_ctl
	myd     string // mariadbd
	pgUser  *user.User
	mu      sync.Mutex
	my      *exec.Cmd
	myDone  chan struct{}
	stopped bool
}

// ErrNoServers means the server binaries are not installed.
var ErrNoServers = errors.New("faults: PostgreSQL or MariaDB binaries not found")

// StartServers creates both servers in a new directory under dir and starts
// them on free loopback ports.
func StartServers(ctx context.Context, dir string) (*Servers, error) {
	start := time.Now()
	s := &Servers{}
	if err := s.findBinaries(); err != nil {
		return nil, err
	}
	var err error
	if s.Dir, err = os.MkdirTemp(dir, "dtx-faults-"); err != nil {
		return nil, err
	}
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return nil, err
	}
	if s.PGPort, err = freePort(); err != nil {
		return nil, err
	}
	if s.MyPort, err = freePort(); err != nil {
		return nil, err
	}
	if err := s.initPG(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.initMy(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.Startup = time.Since(start)
	return s, nil
}

func (s *Servers) findBinaries() error {
	s.pgBin = os.Getenv("FAULTS_PG_BIN")
	if s.pgBin == "" {
		ms, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
		if len(ms) == 0 {
			return fmt.Errorf("%w: no /usr/lib/postgresql/*/bin/initdb (set FAULTS_PG_BIN)", ErrNoServers)
		}
		s.pgBin = filepath.Dir(ms[len(ms)-1])
	}
	for _, name := range []string{"mariadbd", "/usr/sbin/mariadbd", "mysqld", "/usr/sbin/mysqld"} {
		if p, err := exec.LookPath(name); err == nil {
			s.myd = p
			break
		}
	}
	if s.myd == "" {
		return fmt.Errorf("%w: no mariadbd", ErrNoServers)
	}
	if _, err := exec.LookPath("mariadb-install-db"); err != nil {
		return fmt.Errorf("%w: no mariadb-install-db", ErrNoServers)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("%w: running as root needs the postgres user for initdb: %v", ErrNoServers, err)
		}
		s.pgUser = u
	}
	return nil
}

// pgCmd runs a PostgreSQL tool, as postgres when root.
func (s *Servers) pgCmd(ctx context.Context, tool string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.pgBin, tool), args...)
	cmd.Dir = s.Dir
	if s.pgUser != nil {
		uid, _ := strconv.Atoi(s.pgUser.Uid)
		gid, _ := strconv.Atoi(s.pgUser.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	return cmd
}

func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (s *Servers) pgData() string { return filepath.Join(s.Dir, "pg") }

func (s *Servers) initPG(ctx context.Context) error {
	if err := os.Mkdir(s.pgData(), 0o700); err != nil {
		return err
	}
	if s.pgUser != nil {
		uid, _ := strconv.Atoi(s.pgUser.Uid)
		gid, _ := strconv.Atoi(s.pgUser.Gid)
		for _, p := range []string{s.Dir, s.pgData()} {
			if err := os.Chown(p, uid, gid); err != nil {
				return err
			}
		}
	}
	if err := run(s.pgCmd(ctx, "initdb", "-D", s.pgData(), "--auth=trust", "-U", "postgres", "-N")); err != nil {
		return err
	}
	// fsync on, as in production: a restart -m immediate is a crash.
	conf := fmt.Sprintf(`
port = %d
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
max_prepared_transactions = 250
max_connections = 300
fsync = on
synchronous_commit = on
shared_buffers = 32MB
client_connection_check_interval = 1000
`, s.PGPort, s.Dir)
	f, err := os.OpenFile(filepath.Join(s.pgData(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := s.startPG(ctx); err != nil {
		return err
	}
	return s.exec(ctx, "postgres", s.pgDSN("postgres", "postgres"),
		"CREATE ROLE coord LOGIN SUPERUSER", "CREATE DATABASE faults")
}

func (s *Servers) startPG(ctx context.Context) error {
	return run(s.pgCmd(ctx, "pg_ctl", "-D", s.pgData(), "-l", filepath.Join(s.Dir, "pg.log"), "-w", "-t", "60", "-s", "start"))
}

// RestartPG crashes PostgreSQL (pg_ctl stop -m immediate: no checkpoint,
// WAL replayed at start) and starts it again.
func (s *Servers) RestartPG(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := run(s.pgCmd(ctx, "pg_ctl", "-D", s.pgData(), "-m", "immediate", "-w", "-s", "stop")); err != nil {
		return err
	}
	return s.startPG(ctx)
}

func (s *Servers) myData() string { return filepath.Join(s.Dir, "my") }

func (s *Servers) initMy(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "mariadb-install-db", "--no-defaults", "--datadir="+s.myData(),
		"--user="+currentUser(), "--auth-root-authentication-method=normal", "--skip-test-db")
	cmd.Dir = s.Dir
	if err := run(cmd); err != nil {
		return err
	}
	if err := s.startMy(ctx); err != nil {
		return err
	}
	return s.exec(ctx, "mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", s.MyPort),
		"CREATE USER coord@'%'", "GRANT ALL ON *.* TO coord@'%'", "CREATE DATABASE faults")
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}

// startMy starts mariadbd and waits until it answers. Durability as in
// production: innodb_flush_log_at_trx_commit = 1; a short lock wait
// timeout, so that sessions of killed coordinators blocked behind prepared
// rows end soon.
func (s *Servers) startMy(ctx context.Context) error {
	cmd := exec.Command(s.myd, "--no-defaults", "--datadir="+s.myData(), "--port="+strconv.Itoa(s.MyPort),
		"--bind-address=127.0.0.1", "--socket="+filepath.Join(s.Dir, "my.sock"), "--user="+currentUser(),
		"--pid-file="+filepath.Join(s.Dir, "my.pid"), "--log-error="+filepath.Join(s.Dir, "my.err"),
		"--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M", "--innodb-flush-log-at-trx-commit=1",
		"--innodb-lock-wait-timeout=5", "--skip-name-resolve", "--max-connections=400")
	cmd.Dir = s.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the harness
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.my, s.myDone = cmd, done
	db, err := sql.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", s.MyPort))
	if err != nil {
		return err
	}
	defer db.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(s.Dir, "my.err"))
			return fmt.Errorf("faults: mariadbd exited at start: %s", tail(string(log), 1000))
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := db.PingContext(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("faults: mariadbd not ready after 60s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RestartMy crashes MariaDB (SIGKILL) and starts it again.
func (s *Servers) RestartMy(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.my.Process.Kill()
	<-s.myDone
	return s.startMy(ctx)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (s *Servers) pgDSN(user, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", user, s.PGPort, db)
}

// PGDSN is the harness's DSN of PostgreSQL's faults database.
func (s *Servers) PGDSN() string { return s.pgDSN("postgres", "faults") }

// MyDSN is user's DSN of MariaDB's faults database (user root is the
// harness, coord the coordinators).
func (s *Servers) MyDSN(user string) string {
	return fmt.Sprintf("%s@tcp(127.0.0.1:%d)/faults", user, s.MyPort)
}

func (s *Servers) exec(ctx context.Context, driver, dsn string, stmts ...string) error {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("faults: %s: %w", q, err)
		}
	}
	return nil
}

// Close stops both servers and removes the directory. Safe to call more
// than once and from a signal handler.
func (s *Servers) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := os.Stat(filepath.Join(s.pgData(), "postmaster.pid")); err == nil {
		run(s.pgCmd(ctx, "pg_ctl", "-D", s.pgData(), "-m", "immediate", "-w", "-s", "stop"))
	}
	if s.my != nil {
		s.my.Process.Kill()
		<-s.myDone
	}
	if s.Dir != "" {
		os.RemoveAll(s.Dir)
	}
}

// freePort returns a loopback TCP port nobody listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
