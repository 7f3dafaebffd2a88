// Command kcluster is a multicall binary holding every process of the local
// test cluster. Each component runs in its own process, because their signal
// and flag setup may happen only once per process.
//
//	kcluster <component> [flags...]   or   a symlink named after the component
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func(args []string) int{
	"etcd": func(args []string) int {
		etcdmain.Main(args)
		return 0
	},
	"kube-apiserver":          func([]string) int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func([]string) int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kube-scheduler":          func([]string) int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubelet":                 func([]string) int { return cli.Run(kubelet.NewKubeletCommand(context.Background())) },
	"kubectl": func(args []string) int {
		logs.GlogSetter(kubectl.GetLogVerbosity(args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
	"cri-reset": criReset,
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := components[name]; !ok {
		if len(os.Args) < 2 {
			usage()
		}
		// "kcluster etcd --flag" behaves like "etcd --flag".
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := components[name]
	if !ok {
		usage()
	}
	os.Exit(run(os.Args))
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

// criReset stops and removes every pod sandbox and container of a CRI runtime,
// so that the runtime itself tears down their network namespaces (CNI DEL),
// mounts and shims. down.sh runs it before it stops containerd.
//
//	kcluster cri-reset --runtime-endpoint unix:///path/to/containerd.sock
func criReset(args []string) int {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	endpoint := fs.String("runtime-endpoint", "", "CRI endpoint, e.g. unix:///path/to/containerd.sock")
	timeout := fs.Duration("timeout", 60*time.Second, "overall timeout")
	if err := fs.Parse(args[1:]); err != nil || *endpoint == "" {
		fmt.Fprintln(os.Stderr, "usage: cri-reset --runtime-endpoint unix:///path/to/sock [--timeout 60s]")
		return 2
	}
	logger := klog.Background()
	rs, err := remote.NewRemoteRuntimeService(*endpoint, 10*time.Second, nil, &logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri-reset: connect %s: %v\n", *endpoint, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	failed := 0
	pods, err := rs.ListPodSandbox(ctx, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri-reset: list pod sandboxes: %v\n", err)
		return 1
	}
	for _, p := range pods {
		// StopPodSandbox kills the sandbox's containers without a grace period
		// and runs CNI DEL; RemovePodSandbox removes containers and sandbox.
		if err := rs.StopPodSandbox(ctx, p.Id); err != nil {
			fmt.Fprintf(os.Stderr, "cri-reset: stop pod sandbox %s (%s/%s): %v\n", p.Id, p.GetMetadata().GetNamespace(), p.GetMetadata().GetName(), err)
			failed++
			continue
		}
		if err := rs.RemovePodSandbox(ctx, p.Id); err != nil {
			fmt.Fprintf(os.Stderr, "cri-reset: remove pod sandbox %s: %v\n", p.Id, err)
			failed++
		}
	}
	ctrs, err := rs.ListContainers(ctx, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri-reset: list containers: %v\n", err)
		return 1
	}
	for _, c := range ctrs {
		if err := rs.StopContainer(ctx, c.Id, 0); err != nil {
			fmt.Fprintf(os.Stderr, "cri-reset: stop container %s: %v\n", c.Id, err)
		}
		if err := rs.RemoveContainer(ctx, c.Id); err != nil {
			fmt.Fprintf(os.Stderr, "cri-reset: remove container %s: %v\n", c.Id, err)
			failed++
		}
	}
	fmt.Printf("cri-reset: removed %d pod sandboxes and %d leftover containers (%d failures)\n", len(pods), len(ctrs), failed)
	if failed > 0 {
		return 1
	}
	return 0
}
