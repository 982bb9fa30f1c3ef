package dtx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"reflect"
	"sync"

	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

func init() {
	Register("dtx+postgres", &pq.Driver{}, Postgres)
	Register("dtx+mysql", &mysql.MySQLDriver{}, MySQL)
}

// Driver is the wrapper dtx registers with database/sql. It hands every
// connection of its parent driver to database/sql wrapped in a conn that
// passes everything through, except a transaction begun under a global name
// (see WithName), which it prepares instead of committing.
type Driver struct {
	parent  driver.Driver
	dialect Dialect
	opts    []Option
	obs     observer // from WithLogger and WithHooks
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// registered remembers what Register was called with, so that a second call
// with the same arguments is a no-op and a conflicting one is refused.
var registered struct {
	sync.Mutex
	m map[string]*Driver
}

// Register makes parent available to database/sql under name, wrapped by dtx
// and speaking dialect d. Calling it again with the same name, parent and
// dialect does nothing; with a different parent or dialect it panics, as
// sql.Register does for a duplicate name.
//
//	dtx.Register("dtx+mysql-tuned", &mysql.MySQLDriver{}, dtx.MySQL, dtx.WithHoldLimit(16))
//	db, err := sql.Open("dtx+mysql-tuned", dsn)
func Register(name string, parent driver.Driver, d Dialect, opts ...Option) {
	if parent == nil || d == nil {
		panic("dtx: Register driver " + name + " with a nil parent or dialect")
	}
	registered.Lock()
	defer registered.Unlock()
	if prev, ok := registered.m[name]; ok {
		if sameDriver(prev.parent, parent) && prev.dialect == d {
			return
		}
		panic(fmt.Sprintf("dtx: Register called twice for driver %s with a different parent (%T) or dialect (%v)", name, parent, d))
	}
	if registered.m == nil {
		registered.m = make(map[string]*Driver)
	}
	drv := newDriver(parent, d, opts)
	sql.Register(name, drv)
	registered.m[name] = drv
}

func newDriver(parent driver.Driver, d Dialect, opts []Option) *Driver {
	o := defaultOptions(opts)
	return &Driver{parent: parent, dialect: d, opts: opts, obs: observer{logger: o.logger, hooks: o.hooks}}
}

// sameDriver reports whether a and b are the same parent driver, without
// panicking on driver types that cannot be compared.
// Pointers to a zero-size type (&pq.Driver{}, &mysql.MySQLDriver{}) are the
// same driver whatever their address, which Go does not pin down.
func sameDriver(a, b driver.Driver) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta != tb {
		return false
	}
	if ta.Kind() == reflect.Pointer && ta.Elem().Size() == 0 {
		return true
	}
	return ta.Comparable() && a == b
}

// Open implements driver.Driver. database/sql calls it only for drivers
// without DriverContext, which this one has; it is here for callers that use
// the driver directly.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.connector(dsn)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector implements driver.DriverContext. It uses the parent's
// OpenConnector when the parent has one; otherwise it opens connections with
// the parent's Open(dsn), as database/sql itself would.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	c, err := d.connector(dsn)
	if err != nil {
		return nil, err
	}
	reg.addConnector(c)
	return c, nil
}

func (d *Driver) connector(dsn string) (*connector, error) {
	if _, ok := d.parent.(*mysql.MySQLDriver); ok && d.dialect == MySQL {
		parent, reset, greeted, err := mysqlConnector(dsn)
		if err != nil {
			return nil, err
		}
		c := newConnector(parent, d, d.opts)
		c.ss.reset, c.ss.greeted = reset, greeted
		return c, nil
	}
	var parent driver.Connector = dsnConnector{dsn: dsn, drv: d.parent}
	if dc, ok := d.parent.(driver.DriverContext); ok {
		var err error
		if parent, err = dc.OpenConnector(dsn); err != nil {
			return nil, err
		}
	}
	return newConnector(parent, d, d.opts), nil
}

// dsnConnector is database/sql's fallback connector for a driver without
// DriverContext.
type dsnConnector struct {
	dsn string
	drv driver.Driver
}

func (t dsnConnector) Connect(context.Context) (driver.Conn, error) { return t.drv.Open(t.dsn) }
func (t dsnConnector) Driver() driver.Driver                        { return t.drv }
