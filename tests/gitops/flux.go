package main

import (
	"context"
	"fmt"
	"os"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type healthCheckExprs struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Current    string `json:"current"`
	InProgress string `json:"inProgress"`
	Failed     string `json:"failed"`
}

// fluxEvaluator holds the compiled expressions of one healthCheckExprs entry.
type fluxEvaluator struct {
	inProgress, failed, current cel.Program
}

// fluxStatusEvaluator reads the DebugSession entry of the Kustomization's healthCheckExprs.
func fluxStatusEvaluator(file string) (*fluxEvaluator, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var kustomization struct {
		Spec struct {
			HealthCheckExprs []healthCheckExprs `json:"healthCheckExprs"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &kustomization); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	for _, exprs := range kustomization.Spec.HealthCheckExprs {
		if exprs.APIVersion != "ephemera.dev/v1alpha1" || exprs.Kind != "DebugSession" {
			continue
		}
		if exprs.Current == "" {
			return nil, fmt.Errorf("%s: current is required", file)
		}
		var evaluator fluxEvaluator
		for _, e := range []struct {
			source  string
			program *cel.Program
		}{{exprs.InProgress, &evaluator.inProgress}, {exprs.Failed, &evaluator.failed}, {exprs.Current, &evaluator.current}} {
			if e.source == "" {
				continue
			}
			if *e.program, err = fluxProgram(e.source); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
		}
		return &evaluator, nil
	}
	return nil, fmt.Errorf("%s has no healthCheckExprs for ephemera.dev/v1alpha1 DebugSession", file)
}

// fluxProgram prepares an expression as Flux does (fluxcd/pkg runtime/cel):
// parsed, not type-checked, since a custom resource's fields are not
// declared, in an environment with optional types and the strings, sets and
// encoders extensions.
func fluxProgram(source string) (cel.Program, error) {
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		return nil, err
	}
	parsed, issues := env.Parse(source)
	if issues != nil && issues.Err() != nil {
		return nil, fmt.Errorf("parsing %q: %w", source, issues.Err())
	}
	return env.Program(parsed, cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(100))
}

// evaluate applies Flux's rules (RFC 0009): an unobserved generation is
// InProgress; then inProgress, failed and current are tried in that order,
// the first that holds wins; if none does, InProgress. An expression that
// cannot be evaluated leaves the object Unknown, with the error, as Flux's
// status reader does.
func (f *fluxEvaluator) evaluate(object *unstructured.Unstructured) (string, string) {
	content := object.UnstructuredContent()
	if observed, ok, _ := unstructured.NestedInt64(content, "status", "observedGeneration"); ok {
		if generation, ok, _ := unstructured.NestedInt64(content, "metadata", "generation"); ok && observed != generation {
			return status.InProgressStatus.String(), "observedGeneration differs from generation"
		}
	}
	for _, e := range []struct {
		program cel.Program
		result  status.Status
		name    string
	}{
		{f.inProgress, status.InProgressStatus, "inProgress"},
		{f.failed, status.FailedStatus, "failed"},
		{f.current, status.CurrentStatus, "current"},
	} {
		if e.program == nil {
			continue
		}
		value, _, err := e.program.ContextEval(context.Background(), content)
		if err != nil {
			return status.UnknownStatus.String(), fmt.Sprintf("%s: %v", e.name, err)
		}
		holds, ok := value.(types.Bool)
		if !ok {
			return status.UnknownStatus.String(), fmt.Sprintf("%s is not a boolean", e.name)
		}
		if holds {
			return e.result.String(), e.name + " holds"
		}
	}
	return status.InProgressStatus.String(), "no expression holds"
}
