"""``unisde push PATH REPO_ID``: upload a trained pipeline folder to the Hugging Face Hub."""

help = "upload a trained pipeline folder (model_index.json, unet/, scheduler/, README.md) to the Hub"
description = (
    __doc__ + "\n\nThe token comes from --token, HF_TOKEN, or `huggingface-cli login`. Checkpoints and logs stay local."
)


def add_arguments(parser):
    parser.add_argument("path", help="pipeline folder (the --output_dir of `unisde train`)")
    parser.add_argument("repo_id", help="Hub repo id, 'user/name' or 'name'")
    parser.add_argument("--token", default=None)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--dry_run", action="store_true", help="list the files that would be uploaded, upload nothing")


def run(args):
    from unisde.diffusers.hub import check_pipeline_folder, files_to_upload, push_folder

    check_pipeline_folder(args.path)
    if args.dry_run:
        for name in files_to_upload(args.path):
            print(name)
        return 0
    url = push_folder(
        args.path,
        args.repo_id,
        token=args.token,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(url)
    return 0
