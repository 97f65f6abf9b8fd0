// Command meshconfig-check decodes Istio mesh-config fragments strictly
// against the real istio.mesh.v1alpha1.MeshConfig proto (istio.io/api, the
// version pinned in go.mod), the message istiod reads its mesh config into.
//
//	meshconfig-check FILE...
//
// Each FILE is YAML (one or more documents). In every document the MeshConfig
// is found where the tool that reads the file looks for it:
//
//	meshConfig: {...}                       istiod Helm chart values
//	kind: IstioOperator, spec.meshConfig    istioctl overlay
//	kind: ConfigMap, data.mesh (a string)   the `istio` ConfigMap of istio-system
//
// The YAML is converted to JSON and decoded with protojson and
// DiscardUnknown: false, so a misspelled or misplaced field, a wrong type or a
// bad Duration is an error naming it. Every extension provider must also be
// an envoyExtAuthzGrpc one with a service, a port and failOpen false (the
// fail-closed wiring scopegate documents). Prints one line per MeshConfig;
// exit status 1 if any file fails, 2 on usage errors.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: meshconfig-check FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		if err := checkFile(path); err != nil {
			fmt.Printf("FAIL %s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func checkFile(path string) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	found := 0
	for i, doc := range strings.Split("\n"+string(text), "\n---") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return fmt.Errorf("document %d: %v", i+1, err)
		}
		fragment, where, err := meshConfigOf(obj)
		if err != nil {
			return fmt.Errorf("document %d: %v", i+1, err)
		}
		if fragment == nil {
			continue
		}
		found++
		providers, err := decodeStrict(fragment)
		if err != nil {
			return fmt.Errorf("document %d, %s: %v", i+1, where, err)
		}
		fmt.Printf("ok   %s: %s is a valid MeshConfig (%s)\n", path, where, providers)
	}
	if found == 0 {
		return fmt.Errorf("no meshConfig, spec.meshConfig or ConfigMap data.mesh found")
	}
	return nil
}

// meshConfigOf returns the MeshConfig fragment of one document (nil if the
// document holds none) and where it was found.
func meshConfigOf(obj map[string]any) (any, string, error) {
	switch {
	case obj == nil:
		return nil, "", nil
	case obj["kind"] == "IstioOperator":
		spec, _ := obj["spec"].(map[string]any)
		if spec == nil || spec["meshConfig"] == nil {
			return nil, "", fmt.Errorf("IstioOperator without spec.meshConfig")
		}
		return spec["meshConfig"], "spec.meshConfig", nil
	case obj["kind"] == "ConfigMap":
		data, _ := obj["data"].(map[string]any)
		mesh, ok := data["mesh"].(string)
		if !ok {
			return nil, "", nil
		}
		var fragment any
		if err := yaml.Unmarshal([]byte(mesh), &fragment); err != nil {
			return nil, "", fmt.Errorf("data.mesh: %v", err)
		}
		return fragment, "ConfigMap data.mesh", nil
	case obj["meshConfig"] != nil:
		return obj["meshConfig"], "meshConfig", nil
	}
	return nil, "", nil
}

// decodeStrict decodes a MeshConfig fragment with unknown fields rejected and
// checks its extension providers; it returns a summary of them.
func decodeStrict(fragment any) (string, error) {
	raw, err := json.Marshal(fragment)
	if err != nil {
		return "", err
	}
	var mesh meshconfig.MeshConfig
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(raw, &mesh); err != nil {
		return "", err
	}
	var names []string
	for _, p := range mesh.GetExtensionProviders() {
		grpc := p.GetEnvoyExtAuthzGrpc()
		switch {
		case p.GetName() == "":
			return "", fmt.Errorf("an extension provider without a name")
		case grpc == nil:
			return "", fmt.Errorf("extension provider %q is not envoyExtAuthzGrpc", p.GetName())
		case grpc.GetService() == "" || grpc.GetPort() == 0 || grpc.GetPort() > 65535:
			return "", fmt.Errorf("extension provider %q needs a service and a port", p.GetName())
		case grpc.GetFailOpen():
			return "", fmt.Errorf("extension provider %q fails open", p.GetName())
		}
		names = append(names, fmt.Sprintf("%s -> %s:%d", p.GetName(), grpc.GetService(), grpc.GetPort()))
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no extensionProviders")
	}
	return "extensionProviders: " + strings.Join(names, ", "), nil
}
