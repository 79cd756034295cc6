rule demo_dataset:
    output:
        instances=f"{DEMO_COCO}/annotations/instances.json",
        captions=f"{DEMO_COCO}/annotations/captions.json",
        images=directory(f"{DEMO_COCO}/images"),
    params:
        demo=config["coco"].get("demo"),
    log:
        "logs/data/demo_dataset.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/demo_dataset.py"


rule images_table:
    input:
        instances=coco_files()["instances"],
        captions=coco_files()["captions"],
        images=coco_files()["images"],
    output:
        images="results/data/images.parquet",
        skipped="results/data/skipped_images.parquet",
    params:
        n_train=config["coco"]["n_train_images"],
        n_eval=config["coco"]["n_eval_images"],
        seed=config["coco"]["seed"],
        on_bad_image=config["coco"]["on_bad_image"],
    log:
        "logs/data/images_table.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/images_table.py"
