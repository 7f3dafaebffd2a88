// Command kcluster (Kubernetes v1.24) is the multicall binary of the old
// control plane and kubelet that up.sh --kubernetes 1.24 runs next to the
// etcd and kubectl of the main (v1.34) build. Each component runs in its own
// process, as in upstream's cmd/<component>/<component>.go of v1.24.
//
//	kcluster <component> [flags...]   or   a symlink named after the component
package main

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"time"
	_ "time/tzdata" // for CronJob time zones, as upstream's apiserver and controller-manager

	"k8s.io/component-base/cli"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() int{
	"kube-apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubelet":                 runKubelet,
}

// runKubelet is upstream's cmd/kubelet/kubelet.go of v1.24: the kubelet sets
// up logging itself, after it has read its config file, so no cli.Run.
func runKubelet() int {
	command := kubelet.NewKubeletCommand()
	defer logs.FlushLogs()
	rand.Seed(time.Now().UnixNano())
	command.SetGlobalNormalizationFunc(cliflag.WordSepNormalizeFunc)
	if err := command.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		return 1
	}
	return 0
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := components[name]; !ok {
		if len(os.Args) < 2 {
			usage()
		}
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := components[name]
	if !ok {
		usage()
	}
	os.Exit(run())
}

func usage() {
	names := make([]string, 0, len(components))
	for n := range components {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: kcluster <component> [flags]\ncomponents: %v\n", names)
	os.Exit(2)
}
