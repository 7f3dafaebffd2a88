package main

import (
	"context"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// The argocd-cm key Argo CD reads a custom health check for a group and kind from.
const argoCDHealthKey = "resource.customizations.health.ephemera.dev_DebugSession"

// argoCDHealthScript reads the check from the argocd-cm snippet, where Argo CD reads it.
func argoCDHealthScript(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	var configMap struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(data, &configMap); err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	script, ok := configMap.Data[argoCDHealthKey]
	if !ok {
		return "", fmt.Errorf("%s has no data key %s", file, argoCDHealthKey)
	}
	return script, nil
}

// argoCDHealth runs the check the way Argo CD (util/lua) runs one that comes
// from argocd-cm: no standard libraries but package, base and table (Argo CD
// adds a reduced os library, which the script does not use), a one-second
// limit, the object as the global `obj`, and a table {status, message} back,
// whose status must be one of Argo CD's health codes.
func argoCDHealth(script string, object *unstructured.Unstructured) (string, string, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for name, open := range map[string]lua.LGFunction{
		lua.LoadLibName: lua.OpenPackage,
		lua.BaseLibName: lua.OpenBase,
		lua.TabLibName:  lua.OpenTable,
	} {
		if err := state.CallByParam(lua.P{Fn: state.NewFunction(open), NRet: 0, Protect: true}, lua.LString(name)); err != nil {
			return "", "", err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("obj", toLua(state, object.Object))
	if err := state.DoString(script); err != nil {
		return "", "", err
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	health, message := lua.LVAsString(result.RawGetString("status")), lua.LVAsString(result.RawGetString("message"))
	switch health {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
		return health, message, nil
	}
	return "Unknown", "Lua returned an invalid health status", nil
}

// toLua converts a decoded JSON value as Argo CD does: numbers (int64 from
// the unstructured decoder, or float64) become Lua numbers, objects and
// arrays tables, null nil.
func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case []any:
		table := state.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]any:
		table := state.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	}
	return lua.LNil
}
