// agentcell-k8s: one binary holding the Kubernetes components the local
// cluster runs (kube-apiserver, kube-controller-manager, kube-scheduler,
// kubelet, kubectl) and etcd, chosen by the name it was started under
// (symlinks), as hyperkube did. One binary because the five components share
// almost all their packages: the build compiles them once and links once,
// which is most of the build's wall time on a 2-core machine (see README,
// "Kubernetes build").
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // CronJob time zones (controller-manager, apiserver)

	"github.com/spf13/cobra"
	etcdmain "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func run(command *cobra.Command) {
	os.Exit(cli.Run(command))
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args
	// `agentcell-k8s kubelet --flags` works as well as a symlink named kubelet.
	if name == "agentcell-k8s" && len(args) > 1 {
		name = args[1]
		args = append([]string{name}, args[2:]...)
		os.Args = args
	}
	switch name {
	case "kube-apiserver":
		run(apiserver.NewAPIServerCommand())
	case "kube-controller-manager":
		run(controllermanager.NewControllerManagerCommand())
	case "kube-scheduler":
		run(scheduler.NewSchedulerCommand())
	case "kubelet":
		run(kubelet.NewKubeletCommand(context.Background()))
	case "kubectl":
		_, _ = logs.GlogSetter(kubectlcmd.GetLogVerbosity(args))
		command := kubectlcmd.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "etcd":
		etcdmain.Main(args)
	default:
		fmt.Fprintf(os.Stderr, "agentcell-k8s: unknown component %q (one of: %s)\n", name,
			strings.Join([]string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "etcd"}, ", "))
		os.Exit(2)
	}
}
