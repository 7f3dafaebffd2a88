// Command session-health computes the health that GitOps tools give
// DebugSession objects, with those tools' own code, for ephemera's tests:
//
//	session-health -argocd-cm deploy/argocd/argocd-cm.yaml -flux deploy/flux/kustomization.yaml FILE...
//
// Each FILE holds one object as JSON, as the API server returned it; a
// Status with code 404 stands for an object that is gone. It prints one JSON
// line per file with three verdicts:
//
//   - kstatus: sigs.k8s.io/cli-utils, which Flux and `kubectl wait`-style
//     tooling use when no custom rule is given;
//   - argocd: the Lua health check from the argocd-cm snippet, run by
//     gopher-lua the way Argo CD runs a check from argocd-cm (see argocd.go);
//   - flux: the healthCheckExprs of the Flux Kustomization example, evaluated
//     with cel-go in the environment and order Flux uses (see flux.go).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	File           string `json:"file"`
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	ArgoCD         string `json:"argocd"`
	ArgoCDMessage  string `json:"argocdMessage"`
	Flux           string `json:"flux"`
	FluxMessage    string `json:"fluxMessage"`
}

func main() {
	argocdCM := flag.String("argocd-cm", "", "the argocd-cm snippet holding the DebugSession health check")
	fluxKustomization := flag.String("flux", "", "the Flux Kustomization holding healthCheckExprs for DebugSession")
	flag.Parse()
	if *argocdCM == "" || *fluxKustomization == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: session-health -argocd-cm FILE -flux FILE OBJECT.json...")
		os.Exit(2)
	}
	script, err := argoCDHealthScript(*argocdCM)
	if err != nil {
		fail(err)
	}
	evaluator, err := fluxStatusEvaluator(*fluxKustomization)
	if err != nil {
		fail(err)
	}
	out := json.NewEncoder(os.Stdout)
	for _, file := range flag.Args() {
		data, err := os.ReadFile(file)
		if err != nil {
			fail(err)
		}
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(data); err != nil {
			fail(fmt.Errorf("%s: %w", file, err))
		}
		v := verdict{File: file}
		if gone(object) {
			// Neither tool evaluates anything for an object that is not there:
			// kstatus's poller reports NotFound (statusreaders, on a 404 from
			// its reader), which Flux's health check uses as it is, and Argo CD
			// marks a resource of the app that has no live object Missing.
			v.Kstatus, v.KstatusMessage = status.NotFoundStatus.String(), "Resource not found"
			v.Flux, v.FluxMessage = status.NotFoundStatus.String(), "Resource not found"
			v.ArgoCD, v.ArgoCDMessage = "Missing", ""
		} else {
			result, err := status.Compute(object)
			if err != nil {
				fail(fmt.Errorf("%s: kstatus: %w", file, err))
			}
			v.Kstatus, v.KstatusMessage = result.Status.String(), result.Message
			v.ArgoCD, v.ArgoCDMessage, err = argoCDHealth(script, object)
			if err != nil {
				fail(fmt.Errorf("%s: Argo CD health check: %w", file, err))
			}
			v.Flux, v.FluxMessage = evaluator.evaluate(object)
		}
		if err := out.Encode(v); err != nil {
			fail(err)
		}
	}
}

// gone tells whether the file holds the API server's 404 for the object.
func gone(object *unstructured.Unstructured) bool {
	code, _, _ := unstructured.NestedInt64(object.Object, "code")
	return object.GetKind() == "Status" && code == 404
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "session-health:", err)
	os.Exit(1)
}
