// Command kedge-lab runs the NUC lab as a demo: `kedge-lab up` boots a
// coordinator and 5 NUCs into an HA cluster and keeps them until Ctrl-C;
// `kedge-lab down` tears down a lab whose demo was killed.
package main

import (
	"fmt"
	"os"

	"github.com/kedge-io/kedge/test/lab"
)

func main() {
	if err := lab.Main(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "kedge-lab: %v\n", err)
		os.Exit(1)
	}
}
