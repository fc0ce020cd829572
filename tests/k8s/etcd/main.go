// etcd built from the published go.etcd.io/etcd/server/v3 module, for kvbridge's tests only.
// Same entry point as upstream's etcd main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
