// Command session-health computes the health that GitOps tools give
// DebugSession objects, with those tools' own code, for ephemera's tests:
//
//	session-health FILE...   (each FILE one object as JSON)
//
// It prints one JSON line per file: the file and what kstatus
// (sigs.k8s.io/cli-utils, which Flux and `kubectl wait`-style tooling use)
// computes for it.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	File    string `json:"file"`
	Kstatus string `json:"kstatus"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: session-health FILE...")
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, file := range os.Args[1:] {
		data, err := os.ReadFile(file)
		if err != nil {
			fail(err)
		}
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(data); err != nil {
			fail(fmt.Errorf("%s: %w", file, err))
		}
		result, err := status.Compute(object)
		if err != nil {
			fail(fmt.Errorf("%s: %w", file, err))
		}
		if err := out.Encode(verdict{File: file, Kstatus: result.Status.String(), Message: result.Message}); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "session-health:", err)
	os.Exit(1)
}
