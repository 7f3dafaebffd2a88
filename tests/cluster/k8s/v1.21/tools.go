//go:build tools

// The build generates pkg/generated/openapi, which the v1.21 module does not
// ship, with the openapi-gen of the kube-openapi that v1.21 pins; this keeps
// it (and gengo) in go.mod and go.sum.
package main

import _ "k8s.io/kube-openapi/cmd/openapi-gen"
